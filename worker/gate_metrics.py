"""Gate metric names: the one registry of what a gate may name.

Dependency-free, so the job model (worker.job) validates gate names without importing the
report schema; worker.gates reads each metric's value off the typed report (its
SECONDARY_VALUES has one reader per name of SECONDARY_METRICS). A new gate metric is added
here and given its reader in worker.gates.
"""

from __future__ import annotations

#: metrics read off one secondary's typed result (worker.gates.SECONDARY_VALUES)
SECONDARY_METRICS: tuple[str, ...] = (
    "o_dist",
    "o_dist_scaled",
    "o_dist_mean",
    "o_dist_ratio",
    "o_dist_percentile",
    "i_dist_scaled_p90",
    "i_dist_p90",
    "diversity_mean",
    "coverage_by_primary_mean",
    "coverage_by_primary_max",
    "mmd_p_value",
    "fid",
    "duplicates_with_primary",
    "energy_distance",
    "energy_p_value",
    "novel_fraction",
    "novelty_p_value",
)
#: metric -> the metrics.* switches it needs (a gate on a switched-off metric is refused)
METRIC_SWITCHES: dict[str, tuple[str, ...]] = {
    "diversity_mean": ("diversity",),
    "coverage_by_primary_mean": ("coverage",),
    "coverage_by_primary_max": ("coverage",),
    "o_dist_ratio": ("statistics",),
    "o_dist_percentile": ("statistics",),
    "fid": ("statistics",),
    "mmd_p_value": ("statistics",),
    "duplicates_with_primary": ("duplicates",),
}
#: metrics of the adaptation block (per secondary, trained model (default M) and architecture)
ADAPTATION_METRICS = ("f_slope", "ods_f")
#: metrics of the history block: change against earlier runs of the same store
HISTORY_METRICS = (
    "o_dist_mean_change",
    "new_images_far_fraction",
    "change_energy_distance",
    "change_p_value",
    "change_novel_fraction",
)
#: the performance estimated without labels (secondaries without masks)
ESTIMATE_METRICS = ("estimated_f",)
#: metrics of the groups block: one value per pair of groups, dataset "A vs B"
GROUP_METRICS = ("group_separation",)
#: metrics that also apply to the primary when a gate names every dataset ("*")
PRIMARY_TOO = ("skipped_fraction", "diversity_mean")

GATE_METRICS: tuple[str, ...] = (
    *SECONDARY_METRICS,
    *ADAPTATION_METRICS,
    *HISTORY_METRICS,
    *ESTIMATE_METRICS,
    *GROUP_METRICS,
    "skipped_fraction",
)
