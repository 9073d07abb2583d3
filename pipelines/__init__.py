"""The beam-m2v programs: ``beam-m2v embed|reembed|show`` (also ``python -m pipelines.embed`` etc.).

Importing the package drops two warnings Apache Beam logs at import time that do not apply to
these programs (see ``pipelines.logs``); nothing else is changed.
"""

from pipelines.logs import quiet_beam_imports

quiet_beam_imports()
