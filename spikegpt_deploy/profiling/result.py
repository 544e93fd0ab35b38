"""What ``profile_model`` measured and priced, as one object: the content of profile.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import DataError
from .counts import OpCounts


@dataclass
class ProfileResult:
    """What ``profile_model`` measured and priced: the content of profile.json.

    counts: target -> OpCounts (targets sharing a placement share the object); prices: target ->
    price_target result, or {'unsupported': reason} for a target that cannot run the model;
    ann: profile -> price_ann result; paper: paper_formula; meta: model, data, options.
    """

    meta: dict[str, Any]
    counts: dict[str, OpCounts]
    prices: dict[str, dict[str, Any]]
    ann: dict[str, dict[str, Any]]
    paper: dict[str, Any]
    format: str = "spikegpt-deploy-profile/1"
    notes: list[str] = field(default_factory=list)
    neurobench: dict[str, Any] | None = None   # neurobench_compare, when asked for

    @property
    def primary(self) -> str:
        """The first chip target (the one the tables detail)."""
        return next(iter(self.counts))

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, Any] = {}
        seen: dict[int, str] = {}
        for target, c in self.counts.items():
            counts[target] = {"same_as": seen[id(c)]} if id(c) in seen else c.to_dict()
            seen.setdefault(id(c), target)
        return {"format": self.format, "meta": self.meta, "counts": counts,
                "prices": self.prices, "ann": self.ann, "paper": self.paper, "notes": self.notes,
                **({"neurobench": self.neurobench} if self.neurobench is not None else {})}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "profile.json") -> "ProfileResult":
        if not isinstance(data, Mapping) or data.get("format") != "spikegpt-deploy-profile/1":
            raise DataError(f"{source}: not a spikegpt-deploy profile (expected format "
                            f"'spikegpt-deploy-profile/1'); write one with spikegpt-deploy profile")
        try:
            counts: dict[str, OpCounts] = {}
            for target, c in data["counts"].items():
                counts[target] = counts[c["same_as"]] if "same_as" in c else OpCounts.from_dict(c)
            return cls(dict(data["meta"]), counts, dict(data["prices"]), dict(data["ann"]),
                       dict(data["paper"]), notes=list(data.get("notes", [])),
                       neurobench=data.get("neurobench"))
        except (KeyError, TypeError) as exc:
            raise DataError(f"{source}: malformed profile ({type(exc).__name__}: {exc})") from None
