"""Evaluation as the papers report it: DSC, NSD, HD95, volumes, tumour detection, class/region/dataset
averages, and an HTML report (`promptseg evaluate PRED GT`)."""
from .aggregate import class_wise, dataset_wise, mean_std, overall, region_wise
from .detection import DetectionCase, DetectionResult, harmonic_mean, lesion_counts, summarize
from .evaluate import EvaluationResult, EvaluationSettings, evaluate_folders, evaluate_pairs
from .metrics import all_metrics, dice, hd95, mean_surface_distance, nsd, surface_distances, volume_mm3

__all__ = [
    "EvaluationResult",
    "EvaluationSettings",
    "evaluate_folders",
    "evaluate_pairs",
    "dice",
    "nsd",
    "hd95",
    "mean_surface_distance",
    "surface_distances",
    "volume_mm3",
    "all_metrics",
    "DetectionCase",
    "DetectionResult",
    "lesion_counts",
    "harmonic_mean",
    "summarize",
    "class_wise",
    "region_wise",
    "dataset_wise",
    "overall",
    "mean_std",
]
