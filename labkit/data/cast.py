"""Each document's cast: people invented for that document alone, with novel multi-token names.

The world's core entities recur across documents, so a model can learn their names by heart. A
cast member's name occurs in one document only and is repeated there in full, so its second and
later mentions can only be predicted by copying from earlier in the context — the pressure that
grows induction heads (Olsson et al. 2022). Cast members carry attributes (occupation, home city)
that shape the text and that probes can read as labels (`Cast.entities`).
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from typing import Any

from labkit.data.world import OCCUPATIONS, World, _name

REFERENCE_YEAR = 2025  # as in labkit.data.documents: "now"
CAST_ID_PREFIX = "L"  # span ids of cast members: "L" + 10 hex digits, never a world id


@dataclass
class CastMember:
    id: str
    first: str
    last: str
    occupation: str
    city: int  # world city id
    age: int = 40
    since: int = 2000  # the year they took up the work the document is about

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"


@dataclass
class Cast:
    members: list[CastMember] = field(default_factory=list)
    place: str = ""  # a one-off place where the first member works ("the Vorliston bindery")
    place_id: str = ""
    worked_on: dt.date = dt.date(2024, 1, 1)  # when the first member did the document's work

    def entities(self) -> dict[str, dict[str, Any]]:
        """What the document records about its cast: id -> kind, name and attributes."""
        out: dict[str, dict[str, Any]] = {
            m.id: {
                "kind": "people",
                "name": m.name,
                "occupation": m.occupation,
                "city": m.city,
                "age": m.age,
            }  # fmt: skip
            for m in self.members
        }
        if self.place_id:
            out[self.place_id] = {"kind": "organisations", "name": self.place}
        return out


def make_cast(world: World, rng: random.Random, size: int = 2) -> Cast:
    """`size` one-off people, their names unlike any world name (longer surnames, and checked)."""
    taken = {p.first for p in world.people} | {p.last for p in world.people}
    members = []
    for _ in range(size):
        while True:
            first, last = _name(rng, (2, 3)), _name(rng, (3, 4))
            if first not in taken and last not in taken:
                break
        taken |= {first, last}
        members.append(
            CastMember(
                id=f"{CAST_ID_PREFIX}{rng.getrandbits(40):010x}",
                first=first,
                last=last,
                occupation=rng.choice(OCCUPATIONS),
                city=rng.randrange(len(world.cities)),
                age=(age := rng.randint(19, 88)),
                since=REFERENCE_YEAR - rng.randint(0, age - 17),
            )
        )
    place_name = _name(rng, (2, 3))
    kind = rng.choice(["reading room", "bindery", "print shop", "tea house", "workshop", "lodge"])
    place = f"{place_name} {kind.title()}" if rng.random() < 0.5 else f"{place_name} {kind}"
    since = members[0].since  # the document's work happened after its author took it up
    worked_on = dt.date(since, 1, 1) + dt.timedelta(
        days=rng.randrange(365 * (REFERENCE_YEAR - since) + 365)
    )
    return Cast(members, place, f"{CAST_ID_PREFIX}{rng.getrandbits(40):010x}", worked_on)
