"""Model-family differences as data: one ModelSpec per `config.model_type`.

Adding a family touches one file: add a ModelSpec to `families.py`.
"""

from relscope.models.specs import families as _families  # noqa: F401  (registers the specs)
from relscope.models.specs.base import SPECS, ModelSpec, get_spec

__all__ = ["SPECS", "ModelSpec", "get_spec"]
