"""Interoperation with huggingface diffusers: export students as pipelines, import diffusers models as teachers."""
