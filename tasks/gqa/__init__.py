"""GQA test-dev balanced from local files: ``vlmeval_dataset`` (loader; VLMEvalKit's own prompt and scoring)."""
