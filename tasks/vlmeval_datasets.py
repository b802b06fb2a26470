"""Our offline VLMEvalKit data sets, listed once (the registration and the gated model read this list)."""
from __future__ import annotations


def dataset_classes() -> list[type]:
    from truthprobe_eval.tasks.chair.vlmeval_dataset import CHAIRLocal
    from truthprobe_eval.tasks.gqa.vlmeval_dataset import GQALocal
    from truthprobe_eval.tasks.omnimedvqa.vlmeval_dataset import OmniMedVQALocal
    from truthprobe_eval.tasks.pope.vlmeval_dataset import POPELocal

    return [POPELocal, CHAIRLocal, GQALocal, OmniMedVQALocal]


def dataset_names() -> list[str]:
    return [name for cls in dataset_classes() for name in cls.supported_datasets()]


__all__ = ["dataset_classes", "dataset_names"]
