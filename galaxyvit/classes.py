"""The 8 Galaxy Zoo 2 morphology classes of the study, in label order (label1 = index)."""

CLASS_NAMES: tuple[str, ...] = (
    "round elliptical",
    "in-between elliptical",
    "cigar-shaped elliptical",
    "edge-on spiral",
    "barred spiral",
    "unbarred spiral",
    "irregular",
    "merger",
)
NUM_CLASSES = len(CLASS_NAMES)

# Label counts of the study's GZ2 training split (data/gz2_splits/gz2_train.csv).
GZ2_TRAIN_COUNTS: tuple[int, ...] = (21683, 25111, 4766, 10436, 13029, 19653, 3769, 1361)
