"""Figures of the study: one plotting style, deterministic files, and the build that executes every
notebook headless and writes `figures/` with its `MANIFEST.json`.

Inside a notebook:

    from labkit.figures import use_style, save_figure
    use_style()
    ...
    save_figure(fig, "02_induction_heads", figures_dir, sources=[milestone, ...])

`save_figure` writes NAME.png and NAME.pdf with no timestamps, software versions or random ids, so
the same checkpoints give byte-identical files (under the same matplotlib and fonts), and leaves a
record of the checkpoints and files the figure was made from. `build` (the `labkit figures` command)
runs the notebooks, collects those records and writes the manifest.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from labkit.fileio import atomic_write_bytes, check_output_dir, sha256_file
from labkit.resources import checkout
from labkit.run.layout import CONFIG, META
from labkit.run.milestone import Milestone

REPO = checkout() or Path.cwd()  # notebooks/ and figures/ live in a source checkout
NOTEBOOKS = REPO / "notebooks"
RECORDS = ".records"  # per-figure records inside the output directory, gathered by `build`

# A fixed style: every figure looks the same whatever the user's matplotlibrc says.
STYLE: dict[str, Any] = {
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "image.cmap": "viridis",
    "lines.linewidth": 1.5,
    "pdf.fonttype": 42,
    "svg.hashsalt": "labkit",
    "path.simplify": True,
}
# Each cell of the study ({MLA, GQA} x {dense, control}) keeps one colour and one line style.
RUN_COLORS = {"mla": "#1f77b4", "gqa": "#d62728"}
MIX_STYLES = {"dense": "-", "control": "--"}


STUDY_RUNS = REPO / "runs" / "paper-mini"  # the committed study: its figures are figures/


def figures_dir_for(runs: Sequence[str | Path]) -> Path:
    """Where the figures of `runs` go: the checkout's figures/ only for the committed study
    (runs/paper-mini), else a figures/ folder inside the first run (or directory of runs), so
    that other runs never overwrite the study's committed figures."""
    if [Path(r).resolve() for r in runs] == [STUDY_RUNS.resolve()]:
        return REPO / "figures"
    return Path(runs[0]) / "figures"


def notebook_inputs(
    runs: Sequence[str | Path] | None, figures_dir: str | Path | None
) -> tuple[list[str], str]:
    """A notebook's runs and figure directory from its `parameters` cell: `runs` None means
    $LABKIT_RUNS (directories separated by the OS path separator, as `make lab RUNS=...` sets
    it), else the committed study; `figures_dir` None means `figures_dir_for(runs)`. Also sets
    the figure style."""
    if runs is None:
        env = os.environ.get("LABKIT_RUNS", "")
        runs = [p for p in env.split(os.pathsep) if p] or [str(STUDY_RUNS)]
    runs = [str(r) for r in runs]
    use_style()
    return runs, str(figures_dir if figures_dir is not None else figures_dir_for(runs))


def use_style() -> None:
    """Agg backend and the fixed style (call once at the top of a notebook)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcdefaults()
    plt.rcParams.update(STYLE)


def run_style(attention: str, mix: str) -> dict[str, str]:
    """Line colour by attention kind, line style by corpus."""
    return {"color": RUN_COLORS.get(attention, "black"), "linestyle": MIX_STYLES.get(mix, ":")}


def save_figure(
    fig: Any, name: str, out: str | Path, sources: Iterable[str | Path] = ()
) -> list[Path]:
    """Write `name`.png and `name`.pdf deterministically into `out`, and a record of `sources`
    (milestone directories, run directories or data files) for the manifest. Closes the figure."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"figure name {name!r}: use letters, digits, '_' and '-'")
    files = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(files[0], metadata={"Software": None})
    fig.savefig(files[1], metadata={"Creator": None, "Producer": None, "CreationDate": None})
    plt.close(fig)
    _show_in_notebook(files[0])
    records = out / RECORDS
    records.mkdir(exist_ok=True)
    record = {"name": name, "files": [f.name for f in files],
              "sources": sorted({str(Path(s).resolve()) for s in sources})}  # fmt: skip
    (records / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    return files


def _show_in_notebook(png: Path) -> None:
    """In a Jupyter kernel (`make lab`), the saved figure is shown under its cell: the Agg
    backend draws nothing on screen by itself."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and getattr(shell, "kernel", None) is not None:
        display(Image(filename=str(png)))


RESULTS = "results.json"  # the study's numbers, one top-level section per notebook
# sections no notebook writes (`make paper`'s own cost, the induction calibration ladder of
# pretrain/induction_ladder.py): a figure rebuild keeps them
KEPT_SECTIONS = ("study", "induction_ladder")


def _rounded(value: Any, digits: int = 6) -> Any:
    """Floats to `digits` significant digits (and NaN to None) so that reruns on the same
    checkpoints give byte-identical results, whatever the last bits of a BLAS reduction did."""
    import math

    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # numpy / torch scalars
        value = value.item()
        if isinstance(value, (bool, int)):
            return value
    if isinstance(value, float):
        x = float(value)
        return None if not math.isfinite(x) else float(f"{x:.{digits}g}")
    if isinstance(value, dict):
        return {str(k): _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        items = value.tolist() if hasattr(value, "tolist") else value
        return [_rounded(v, digits) for v in items]
    raise TypeError(f"results hold numbers, strings, lists and dicts, not {type(value).__name__}")


def save_results(out: str | Path, section: str, values: dict[str, Any]) -> Path:
    """Merge `values` into `out`/results.json under `section` (replacing that section, keeping the
    others): the numbers a notebook measured, for the README to cite by key. Keys sorted, floats
    rounded (see `_rounded`), written atomically."""
    path = Path(out) / RESULTS
    results = load_results(out)
    results[section] = _rounded(values)
    text = json.dumps(results, indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode())
    return path


def check_results_dir(out: str | Path) -> None:
    """ValueError (one line) unless `out` is a directory whose results.json, if any, can be merged
    into: for scripts that train for a long time before they write their section."""
    if not Path(out).is_dir():
        raise ValueError(f"{out}: no such directory")
    load_results(out)


def load_results(out: str | Path) -> dict[str, Any]:
    """The results.json of a figures directory ({} when there is none yet). ValueError, naming
    the file, when it is not a JSON object: nothing is merged into (or over) a damaged file."""
    path = Path(out) / RESULTS
    if not path.exists():
        return {}
    try:
        results = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"{path} is not valid JSON ({e}); restore it (git checkout) or delete it"
        ) from None
    if not isinstance(results, dict):
        kind = type(results).__name__
        raise ValueError(f"{path} holds a JSON {kind}, not an object of sections")
    return results


# ------------------------------------------------------------------------------------ validation
def check_image(path: Path) -> None:
    """Raise ValueError unless `path` is a non-empty, readable PNG or a complete PDF."""
    data = path.read_bytes() if path.exists() else b""
    if not data:
        raise ValueError(f"{path} is missing or empty")
    if path.suffix == ".png":
        import matplotlib.image

        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError(f"{path} is not a PNG")
        pixels = matplotlib.image.imread(path)
        if pixels.ndim != 3 or min(pixels.shape[:2]) < 10:
            raise ValueError(f"{path}: unexpected image shape {pixels.shape}")
        if float(pixels.std()) == 0.0:
            raise ValueError(f"{path} is a blank image")
    elif path.suffix == ".pdf":
        if not data.startswith(b"%PDF-") or b"%%EOF" not in data[-1024:]:
            raise ValueError(f"{path} is not a complete PDF")
    else:
        raise ValueError(f"{path}: figures are .png or .pdf")


# ----------------------------------------------------------------------------------------- build
class NotebookFailed(RuntimeError):
    """A notebook raised: the message shows the failing cell and its traceback."""


def notebooks(names: Sequence[str] | None = None, directory: Path = NOTEBOOKS) -> list[Path]:
    """The paired notebooks NN_name.py in order, or those whose names start with `names`."""
    found = sorted(p for p in directory.glob("[0-9][0-9]_*.py"))
    if not names:
        return found
    chosen = [p for p in found if any(p.stem.startswith(n) for n in names)]
    missing = [n for n in names if not any(p.stem.startswith(n) for p in found)]
    if missing:
        raise ValueError(f"unknown notebooks {missing}; notebooks: {[p.stem for p in found]}")
    return chosen


def inject_parameters(nb: Any, params: dict[str, Any]) -> Any:
    """Papermill's convention: a cell tagged `injected-parameters` right after the one tagged
    `parameters`, assigning each value (its repr) so it overrides the default."""
    import nbformat

    index = next(
        (
            i
            for i, c in enumerate(nb.cells)
            if "parameters" in c.get("metadata", {}).get("tags", [])
        ),
        None,
    )
    if index is None:
        raise ValueError("the notebook has no cell tagged 'parameters'")
    source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, cell)
    return nb


def execute_notebook(
    path: Path, params: dict[str, Any], kernel: str = "python3", timeout: int = 1800
) -> Any:
    """Run a jupytext notebook headless in `kernel` from its own directory; the executed notebook
    is returned. A failing cell raises NotebookFailed with the cell and its traceback."""
    import jupytext
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = inject_parameters(jupytext.read(path), params)
    # The kernel inherits this environment: headless plotting, no hash randomisation.
    os.environ.update({"MPLBACKEND": "Agg", "PYTHONHASHSEED": "0"})
    client = NotebookClient(
        nb,
        kernel_name=kernel,
        timeout=timeout,
        resources={"metadata": {"path": str(path.parent)}},
        extra_arguments=["--IPKernelApp.log_level=ERROR"],  # not its TCP-transport notice
    )
    try:
        client.execute()
    except CellExecutionError as err:
        raise NotebookFailed(f"{path.name} failed:\n{err}") from None
    return nb


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _display(path: Path) -> str:
    """A path relative to the repository when it is inside it (manifests stay portable)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path.resolve())


def describe_sources(sources: Iterable[str]) -> dict[str, Any]:
    """Runs and checkpoint hashes behind a figure. A milestone is identified by the SHA-256 of its
    weights (from its meta.json, verified when written); other files by their own SHA-256."""
    runs, checkpoints, files = set(), {}, {}
    for s in map(Path, sources):
        if (s / META).exists():  # a milestone directory
            checkpoints[_display(s)] = Milestone.read(s).model_sha256
            runs.add(_display(s.parent.parent))
        elif (s / CONFIG).exists():  # a run directory (its logged metrics)
            runs.add(_display(s))
        elif s.is_file():
            files[_display(s)] = sha256_file(s)
    return {"runs": sorted(runs), "checkpoints": dict(sorted(checkpoints.items())), "inputs": files}


def stale_figures(out: Path, wanted: set[str]) -> list[Path]:
    """Figures in `out` that the previous build wrote (its MANIFEST.json lists them) and no
    notebook makes any more: the only files a rebuild removes."""
    previous = out / "MANIFEST.json"
    if not previous.exists():
        return []
    figures = json.loads(previous.read_text()).get("figures", {})
    ours = {f for fig in figures.values() for f in fig.get("files", [])}
    return [out / f for f in sorted(ours - wanted) if (out / f).is_file()]


def build(
    runs: Sequence[str | Path],
    out: str | Path = REPO / "figures",
    smoke: bool = False,
    names: Sequence[str] | None = None,
    kernel: str = "python3",
    executed_dir: str | Path | None = None,
    log: Any = print,
    directory: Path = NOTEBOOKS,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Execute the notebooks against `runs`, write every figure into `out` and `MANIFEST.json`.
    Returns the manifest. With every notebook built, figures no notebook wrote any more are
    removed from `out` — only files an earlier build listed in its MANIFEST.json. A non-empty
    `out` without MANIFEST.json is refused unless `overwrite`."""
    import nbformat

    from labkit.run import find_runs

    out = Path(out).resolve()
    # figures a notebook saved there itself (make lab) left their records: labkit's own files
    marker = RECORDS if (out / RECORDS).is_dir() else "MANIFEST.json"
    check_output_dir(out, marker, "figures directory", overwrite)
    out.mkdir(parents=True, exist_ok=True)
    found = find_runs(runs)
    for r in found:
        if not r.finished:
            log(f"[figures] warning: {r.name} has not finished training (no final.json)")
    run_dirs = [str(r.path.resolve()) for r in found]
    chosen = notebooks(names, directory)
    if not names:  # a full build regenerates every notebook's section; a partial one keeps all
        kept = {k: v for k, v in load_results(out).items() if k in KEPT_SECTIONS}
        (out / RESULTS).unlink(missing_ok=True)
        for section, values in kept.items():
            save_results(out, section, values)
    records_dir = out / RECORDS
    manifest: dict[str, Any] = {
        "labkit_commit": _git_commit(),
        "smoke": smoke,
        "runs": [_display(Path(r)) for r in run_dirs],
        "figures": {},
    }
    for path in chosen:
        for stale in records_dir.glob("*.json"):
            stale.unlink()
        start = time.perf_counter()
        params = {"runs": run_dirs, "smoke": smoke, "figures_dir": str(out)}
        nb = execute_notebook(path, params, kernel)
        if executed_dir:
            Path(executed_dir).mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, Path(executed_dir) / f"{path.stem}.ipynb")
        made = sorted(records_dir.glob("*.json")) if records_dir.exists() else []
        if not made:
            raise NotebookFailed(f"{path.name} wrote no figure (did it call save_figure?)")
        for rec_path in made:
            record = json.loads(rec_path.read_text())
            for f in record["files"]:
                check_image(out / f)
            manifest["figures"][record["name"]] = {
                "notebook": _display(path),
                "labkit_commit": manifest["labkit_commit"],
                "files": record["files"],
                **describe_sources(record["sources"]),
            }
        log(f"[figures] {path.stem}: {len(made)} figures in {time.perf_counter() - start:.0f} s")
    if records_dir.exists():
        for rec in records_dir.glob("*.json"):
            rec.unlink()
        records_dir.rmdir()
    if names:  # a partial build keeps the other notebooks' entries
        previous = out / "MANIFEST.json"
        if previous.exists():
            old = json.loads(previous.read_text())["figures"]
            manifest["figures"] = {**old, **manifest["figures"]}
    else:
        wanted = {f for fig in manifest["figures"].values() for f in fig["files"]}
        for stale in stale_figures(out, wanted):
            stale.unlink()
            log(f"[figures] removed {stale.name} (no notebook makes it any more)")
    manifest["figures"] = dict(sorted(manifest["figures"].items()))
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_write_bytes(out / "MANIFEST.json", text.encode())
    return manifest
