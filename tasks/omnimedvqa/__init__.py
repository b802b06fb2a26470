"""OmniMedVQA from its published folder: ``vlmeval_dataset`` (loader; VLMEvalKit's multiple-choice prompt and
scoring)."""
