"""The two profiles of the TRS API and the base paths each is mounted at."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aggregator.trs.render import DEFAULT, STRICT, Schema


@dataclass(frozen=True, slots=True)
class Profile:
    """A flavour of the TRS API.

    Attributes:
        name: ``default`` or ``strict-2.0.0``.
        schema: The field specs documents are conformed to.
        mounts: The base paths it is served under.
    """

    name: str
    schema: Schema
    mounts: tuple[str, ...]

    @property
    def strict(self) -> bool:
        """Whether only TRS 2.0.0 fields are emitted (no extensions, no provenance)."""
        return self.schema.strict


#: TRS 2.0.1 with provenance, at the standard base path, Dockstore's layout (Toil,
#: TOIL_TRS_ROOT) and the path cwltool's --add-ga4gh-tool-registry resolver requests.
DEFAULT_PROFILE: Final = Profile(
    "default", DEFAULT, ("/ga4gh/trs/v2", "/api/ga4gh/trs/v2", "/api/ga4gh/v2")
)
#: Exactly the fields of TRS 2.0.0, for client libraries whose models forbid unknown fields.
STRICT_PROFILE: Final = Profile("strict-2.0.0", STRICT, ("/strict-2.0.0/ga4gh/trs/v2",))
PROFILES: Final = (DEFAULT_PROFILE, STRICT_PROFILE)
