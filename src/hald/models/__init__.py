"""Model registry: timm backbones plus the small-resolution variants registered in `backbones` and the
official code's constructions (architecture and initialisation) registered in `official`."""
from hald.models import backbones as _backbones  # noqa: F401  (registers the models with timm)
from hald.models import official as _official  # noqa: F401  (registers the papers' models with timm)
from hald.models.build import build_backbone, load_teacher, save_weights, load_weights  # noqa: F401
