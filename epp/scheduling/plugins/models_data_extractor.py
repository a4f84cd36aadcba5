"""models-data-extractor: stores a model server's /v1/models answer as endpoint attributes (paired with
models-data-source). Nothing in this EPP reads them; it loads so configs that wire it keep working."""
from __future__ import annotations

from ..framework import DataExtractor, register


@register
class ModelsDataExtractor(DataExtractor):
    type_name = "models-data-extractor"
