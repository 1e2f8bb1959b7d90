"""labkit: pre-train small MLA/GQA language models and look inside them while they learn."""

from labkit.config import ModelConfig

__all__ = ["ModelConfig", "LabModel"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # LabModel imports torch and transformer_lens; keep `import labkit` light for the CLI.
    if name == "LabModel":
        from labkit.model import LabModel

        return LabModel
    raise AttributeError(f"module 'labkit' has no attribute {name!r}")
