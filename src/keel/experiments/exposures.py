"""The exposures stream and its events, as the experiment code names them.

They are declarations keel adds to a project, so they live in `keel.project.exposures`; this
module keeps the names the gateway and the experiment report import.
"""

from keel.project.exposures import EXPOSURES, Exposure

__all__ = ["EXPOSURES", "Exposure"]
