"""A seeded synthetic world: invented people, places, organisations, elements, species and events,
with attributes and relations. Documents (labkit.data.documents) talk about it, and every number
they state is computed from it, so probes get ground-truth targets and tests can recompute facts.

Names are invented from syllables so that nothing in the world collides with real-world knowledge.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import asdict, dataclass, field

GENERATOR_VERSION = "2"

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr"]
_ONSETS += ["st", "th", "tr", "sh", "ch", "gl", "pl", "qu", "h", "j", "w", "y"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou", "ae", "y"]
_CODAS = ["", "", "", "n", "r", "l", "s", "th", "m", "x", "nd", "rk", "st", "v"]

OCCUPATIONS = [
    "chemist", "historian", "engineer", "botanist", "cartographer", "teacher", "architect",
    "physician", "composer", "economist", "surveyor", "librarian", "astronomer", "baker",
]  # fmt: skip
ORG_KINDS = ["institute", "guild", "foundry", "library", "observatory", "cooperative", "academy"]
HABITATS = ["wetlands", "highlands", "coastal reefs", "pine forests", "salt flats", "river deltas"]
DIETS = ["herbivore", "carnivore", "omnivore", "filter feeder"]
SPECIES_CLASSES = ["bird", "fish", "mammal", "beetle", "reptile", "amphibian"]
EVENT_KINDS = ["festival", "treaty signing", "flood", "expedition", "congress", "fair", "eclipse"]
COUNTRY_COUNT = 6
# Descriptive attributes: facts like any other, and a source of varied vocabulary.
ADJECTIVES = [
    "weathered", "gilded", "crooked", "towering", "sunken", "whitewashed", "moss-covered",
    "octagonal", "narrow", "vaulted", "copper-roofed", "terraced", "lantern-lit", "ancient",
    "sprawling", "red-brick", "marble", "timber-framed", "windswept", "shaded", "arched",
    "crumbling", "polished", "painted", "hexagonal", "sandstone", "ivy-clad", "granite",
]  # fmt: skip
LANDMARKS = [
    "clock tower", "aqueduct", "lighthouse", "market hall", "bridge", "amphitheatre", "granary",
    "observatory dome", "canal lock", "bell tower", "library", "fountain", "citadel", "mill",
    "harbour wall", "botanical garden", "salt warehouse", "railway depot", "opera house",
]  # fmt: skip
INDUSTRIES = [
    "glassblowing", "shipbuilding", "textile dyeing", "clockmaking", "salt mining", "printing",
    "paper milling", "copper smelting", "tea blending", "rope making", "ceramics", "brewing",
    "lens grinding", "furniture carving", "wool spinning", "instrument making",
]  # fmt: skip
FIELDS = [
    "tidal mechanics", "soil chemistry", "archival restoration", "crystal optics", "folk music",
    "bridge engineering", "plant genetics", "coastal mapping", "metallurgy", "public health",
    "linguistics", "celestial navigation", "acoustics", "urban planning", "glaciology",
]  # fmt: skip
COLOURS = [
    "amber", "slate-grey", "violet", "pale green", "silvery", "rust-red", "ochre", "cobalt blue",
    "ivory", "charcoal", "copper", "teal", "mottled brown", "golden", "pearl-white",
]  # fmt: skip
HOBBIES = [
    "beekeeping", "chess", "rowing", "bookbinding", "birdwatching", "fencing", "pottery",
    "cartography", "choral singing", "kite flying", "woodturning", "falconry", "astronomy",
]  # fmt: skip


def _name(rng: random.Random, syllables: tuple[int, int] = (2, 3)) -> str:
    n = rng.randint(*syllables)
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n)]
    return ("".join(parts) + rng.choice(_CODAS)).capitalize()


@dataclass
class Country:
    id: int
    name: str
    capital: int = -1  # city id


@dataclass
class City:
    id: int
    name: str
    country: int
    population: int
    founded: int  # year
    area_km2: int
    elevation_m: int
    landmark: str = ""
    industry: str = ""


@dataclass
class Person:
    id: int
    first: str
    last: str
    born: int
    city: int
    occupation: str
    employer: int  # organisation id
    height_cm: int
    hobby: str = ""

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"


@dataclass
class Organisation:
    id: int
    name: str
    kind: str
    city: int
    founded: int
    members: int
    field: str = ""


@dataclass
class Element:
    id: int
    name: str
    symbol: str
    atomic_number: int
    melting_point_k: int
    density: float  # g/cm^3, one decimal
    discovered: int
    discoverer: int  # person id
    colour: str = ""


@dataclass
class Species:
    id: int
    name: str
    cls: str
    habitat: str
    region: int  # city id of the nearest city
    mass_kg: float
    lifespan_years: int
    diet: str
    colour: str = ""


@dataclass
class Event:
    id: int
    name: str
    kind: str
    date: str  # ISO date
    city: int
    attendance: int


@dataclass
class World:
    seed: int
    countries: list[Country] = field(default_factory=list)
    cities: list[City] = field(default_factory=list)
    people: list[Person] = field(default_factory=list)
    organisations: list[Organisation] = field(default_factory=list)
    elements: list[Element] = field(default_factory=list)
    species: list[Species] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    # Concepts defined once per world (e.g. what counts as an "early" element), never per document.
    concepts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def entity(self, kind: str, idx: int):
        return getattr(self, kind)[idx]


def build_world(
    seed: int,
    n_cities: int = 40,
    n_people: int = 240,
    n_organisations: int = 50,
    n_elements: int = 30,
    n_species: int = 40,
    n_events: int = 60,
) -> World:
    """The world for `seed`: the same seed always gives the same world."""
    rng = random.Random(f"world-{seed}")
    used: set[str] = set()

    def unique(make) -> str:
        while True:
            name = make()
            if name not in used:
                used.add(name)
                return name

    w = World(seed=seed)
    w.countries = [Country(i, unique(lambda: _name(rng, (2, 3)))) for i in range(COUNTRY_COUNT)]
    # One RNG stream in a fixed order: every kind is drawn after the kinds before it.
    _add_cities(w, rng, unique, n_cities)
    _add_organisations(w, rng, unique, n_organisations, n_cities)
    _add_people(w, rng, unique, n_people, n_cities, n_organisations)
    _add_elements(w, rng, unique, n_elements)
    _add_species(w, rng, unique, n_species, n_cities)
    _add_events(w, rng, unique, n_events, n_cities)
    years = sorted(e.discovered for e in w.elements)
    # The median discovery year, to the decade: about half the elements are "early".
    w.concepts["early_element_before"] = round(years[len(years) // 2], -1) if years else 1950
    return w


def _add_cities(w: World, rng: random.Random, unique, n: int) -> None:
    for i in range(n):
        w.cities.append(
            City(
                id=i,
                name=unique(lambda: _name(rng)),
                country=i % COUNTRY_COUNT,
                population=rng.randrange(2_000, 900_000, 10),
                founded=rng.randint(700, 1900),
                area_km2=rng.randint(12, 900),
                elevation_m=rng.randint(0, 2400),
                landmark=f"{rng.choice(ADJECTIVES)} {rng.choice(LANDMARKS)}",
                industry=rng.choice(INDUSTRIES),
            )
        )
    for c in w.countries:
        c.capital = max((x for x in w.cities if x.country == c.id), key=lambda x: x.population).id


def _add_organisations(w: World, rng: random.Random, unique, n: int, n_cities: int) -> None:
    for i in range(n):
        kind = rng.choice(ORG_KINDS)
        w.organisations.append(
            Organisation(
                id=i,
                name=f"{unique(lambda: _name(rng))} {kind.capitalize()}",
                kind=kind,
                city=rng.randrange(n_cities),
                founded=rng.randint(1500, 2015),
                members=rng.randint(12, 4000),
                field=rng.choice(FIELDS),
            )
        )


def _add_people(w: World, rng: random.Random, unique, n: int, n_cities: int, n_orgs: int) -> None:
    for i in range(n):
        w.people.append(
            Person(
                id=i,
                first=unique(lambda: _name(rng, (2, 2))),
                last=unique(lambda: _name(rng, (2, 3))),
                born=rng.randint(1890, 2004),
                city=rng.randrange(n_cities),
                occupation=rng.choice(OCCUPATIONS),
                employer=rng.randrange(n_orgs),
                height_cm=rng.randint(150, 200),
                hobby=rng.choice(HOBBIES),
            )
        )


def _add_elements(w: World, rng: random.Random, unique, n: int) -> None:
    numbers = rng.sample(range(120, 240), n)
    # Discoverers were adults when they made the discovery, and it happened before 2025.
    candidates = [p for p in w.people if p.born <= 1980]
    for i in range(n):
        name = unique(lambda: _name(rng) + "ium")
        who = rng.choice(candidates)
        w.elements.append(
            Element(
                id=i,
                name=name,
                symbol=name[0] + rng.choice("abcdefghklmnprstuvxz"),
                atomic_number=numbers[i],
                melting_point_k=rng.randint(180, 3900),
                density=round(rng.uniform(0.5, 22.0), 1),
                discovered=min(2024, who.born + rng.randint(22, 70)),
                discoverer=who.id,
                colour=rng.choice(COLOURS),
            )
        )


def _add_species(w: World, rng: random.Random, unique, n: int, n_cities: int) -> None:
    for i in range(n):
        w.species.append(
            Species(
                id=i,
                name=unique(lambda: _name(rng).lower()),
                cls=rng.choice(SPECIES_CLASSES),
                habitat=rng.choice(HABITATS),
                region=rng.randrange(n_cities),
                mass_kg=round(rng.uniform(0.1, 400.0), 1),
                lifespan_years=rng.randint(2, 90),
                diet=rng.choice(DIETS),
                colour=rng.choice(COLOURS),
            )
        )


def _add_events(w: World, rng: random.Random, unique, n: int, n_cities: int) -> None:
    start = dt.date(1800, 1, 1).toordinal()
    end = dt.date(2025, 12, 31).toordinal()
    for i in range(n):
        kind = rng.choice(EVENT_KINDS)
        day = dt.date.fromordinal(rng.randint(start, end))
        w.events.append(
            Event(
                id=i,
                name=f"{unique(lambda: _name(rng))} {kind}",
                kind=kind,
                date=day.isoformat(),
                city=rng.randrange(n_cities),
                attendance=rng.randint(40, 250_000),
            )
        )


def world_from_manifest(manifest: dict) -> World:
    """The world a data set was built from: its seed and sizes as the manifest records them.
    The one place that rebuilds a world from a data set (probes, eval tasks, the build)."""
    cfg = manifest["config"]
    sizes = cfg.get("world", {})
    return build_world(cfg["seed"], **{f"n_{k}": v for k, v in sizes.items()})
