"""The typed records of the files the stages hand each other (pipeline.artifacts says which file is which).

Each record is a dataclass with `from_json`/`to_json` (the JSON layout is the fields' order; a field made with
`opt()` is left out of the file while it is None). A load names the file and the key when one is missing or of the
wrong kind; a key a record does not know (a newer version's) is ignored when reading, refused when writing
(`strict`), so nothing a stage computes is dropped unseen. Readers use attributes, never string keys.
"""

from dataclasses import dataclass, field

from pipeline.errors import PipelineError
from pipeline.io import Record, opt


@dataclass(kw_only=True)
class Score(Record):
    """pipeline.inspect.scores.score: a model's probabilities against one split's labels."""

    accuracy: float
    ci95: list[float] | None = None  # 95 % Wilson interval (None: no rows, or metrics that predate it)
    n: int | None = None  # the split's rows
    loss: float | None = None  # negative log-likelihood
    ece: float | None = None  # expected calibration error, 15 bins
    balanced_accuracy: float | None = opt()  # mean per-class recall (None: metrics that predate it)
    balanced_ci95: list[float] | None = opt()  # class-stratified bootstrap
    macro_f1: float | None = opt()
    macro_f1_ci95: list[float] | None = opt()
    worst_recall: float | None = opt()  # the lowest per-class recall, and its class index
    worst_class: int | None = opt()

    def value(self, metric: str) -> float:
        """The score in the run's metric (accuracy, balanced_accuracy or macro_f1)."""
        v = getattr(self, metric)
        if v is None:
            raise PipelineError(f"a score has no `{metric}` (written by an older version): rerun its stage")
        return v

    def interval(self, metric: str) -> list[float] | None:
        """The 95 % interval of the score in `metric`."""
        from pipeline.inspect.scores import CI_KEYS

        return getattr(self, CI_KEYS[metric])

    @classmethod
    def of(cls, s: dict | None) -> "Score | None":
        """A pipeline.inspect.scores.score dict as a record."""
        return None if s is None else cls.from_json(s, "score", strict=True)


@dataclass(kw_only=True)
class Paired(Record):
    """pipeline.inspect.scores.compare: A against B on the same rows."""

    diff: float  # metric(A) − metric(B)
    ci95: list[float]  # paired bootstrap (class-stratified for balanced accuracy and macro-F1)
    p: float  # accuracy: McNemar's exact; else the paired bootstrap's
    a_only: int
    b_only: int
    n: int
    resolved: bool
    metric: str | None = opt()  # None: accuracy


@dataclass(kw_only=True)
class PreparedMeta(Record):
    """data/prepared/meta.json: what the prepare stage made of the raw data (written with sorted keys)."""

    classes: list[str]  # the label of index i (folder names, or the data set's own)
    class_names: list[str] | None = None  # readable names where they differ (CIFAR, Fashion-MNIST); else classes
    image_shape: list[int]  # H, W, C of every prepared image
    train_mean: list[float]  # per channel, in [0, 1], of the training split
    train_std: list[float]
    counts: dict[str, int] = field(default_factory=dict)  # split -> images
    counts_per_class: dict[str, dict[str, int]] = field(default_factory=dict)
    test_labeled: bool = False
    submission_header: list[str] = field(default_factory=lambda: ["id", "label"])
    source: dict = field(default_factory=dict)  # where the raw data came from (format, path, image modes)
    bad_images: dict = field(default_factory=lambda: {"count": 0, "files": []})
    ignored_files: int = 0  # files whose extension no image reader knows
    params: dict = field(default_factory=dict)  # the `data` params it was prepared with

    @property
    def names(self) -> list[str]:
        """Readable class names (the data set's, else the labels)."""
        return self.class_names or self.classes


@dataclass(kw_only=True)
class MemberSpec(Record):
    """models/<key>/spec.json: everything pipeline.learn.trained needs to rebuild and run one model."""

    key: str
    arch: str
    source: str | None = None
    n_in: int
    n_out: int
    size: int  # the image side it was last trained at (and evaluates at)
    native_size: int  # the prepared image side
    mean: list[float]
    std: list[float]
    classes: list[str]
    ps: float
    model_kwargs: dict
    pretrained: bool | str = False
    tta: bool
    channels_last: bool
    precision: str = "fp32"  # what the train stage evaluated with: fp32 | bf16 | fp16 (absent: fp32)
    device: str = "cpu"  # where (absent: cpu)
    seed: int | None = None
    train: dict = field(default_factory=dict)  # the whole TrainSpec (pipeline.params.TrainSpec.to_dict)
    folds: list[str] | None = opt()  # `folds: K`: the fold models' sub-folders
    refit: dict | None = opt()  # `refit: true`: the refit's training images and the validated lr

    @property
    def cam_layer(self) -> str | None:
        """The layer Grad-CAM looks at (None: the last convolution)."""
        return self.train.get("cam_layer")


@dataclass(kw_only=True)
class FoldScores(Record):
    """metrics/<key>.json `folds` of a `folds: K` entry."""

    k: int
    cv_accuracy: list[float]  # each fold model on its held-out fold
    cv_mean: float
    cv_std: float
    oof: Score | None = None  # all out-of-fold predictions together
    valid_accuracy: list[float]  # each fold model on the validation split (`valid` is their average's)
    valid_mean: float
    valid_std: float


@dataclass(kw_only=True)
class Refit(Record):
    """metrics/<key>.json `refit` of a `refit: true` entry."""

    train_images: int
    lr: float | None = None
    phases: list[list[int]] | None = None
    train_s: float | None = None
    figures: str = ""


@dataclass(kw_only=True)
class MemberMetrics(Record):
    """metrics/<key>.json: one model's scores, recipe and costs."""

    valid: Score | None  # None: a refit (trained on the validation split)
    test: Score | None  # None: an unlabelled test split
    oof: Score | None = opt()  # one fold model on its held-out rows
    lr: float
    lr_found: bool = False
    lr_suggested: float | None = None
    phases: list[list[int]]  # [image side, epochs] per phase
    freeze_epochs: int = 0
    bs: int
    train_s: float
    img_per_s: float
    images_seen: int | None = None  # epochs × training images (frozen epochs included); older metrics: None
    eval_s: float = 0.0
    param_count: int
    train_images: int
    device: str = "cpu"
    precision: str = "fp32"
    peak_gpu_mib: int | None = None
    sampler: str | None = opt()  # shuffle | balanced: how its epochs drew rows (None: metrics that predate it)
    loss_weights: str | None = opt()  # none | balanced: its loss's class weights (None: metrics that predate it)
    arch: str
    source: str = "timm"
    pretrained: bool = False
    time_budget: dict | None = opt()  # `time_budget`: asked, probed, chosen (pipeline.learn.recipe.budget_recipe)
    folds: FoldScores | None = opt()
    test_validated: Score | None = opt()  # `refit`: the validated model's test score
    refit: Refit | None = opt()
    average: dict | None = opt()  # `average`: kind, optimizer steps averaged, decay or start
    snapshots: list[str] | None = opt()  # `snapshots`: the names of the members taken along this run
    snapshot_of: str | None = opt()  # a snapshot member: the run it was taken from (whose cost it shares) ...
    snapshot_epoch: int | None = opt()  # ... and the epoch (across fits) at whose end

    def seen(self) -> int:
        """Training images seen; computed from the recipe where the metrics predate `images_seen`."""
        if self.images_seen is not None:
            return self.images_seen
        return (sum(e for _, e in self.phases) + self.freeze_epochs) * self.train_images


@dataclass(kw_only=True)
class EnsembleModel(Record):
    """ensemble/model.json: how pipeline.learn.trained.Ensemble blends its members' probabilities."""

    method: str
    members: list[str]
    weights: dict[str, float]
    classes: list[str]
    stacker: dict | None  # stacking: the fitted model as plain numbers
    temperatures: dict[str, float] | None = None  # `calibrate: temperature`: each member's, before blending
    temperature: float | None = None  # and the blend's, after
    tau: float | None = opt()  # `adjust: logit`: log p − τ · log_prior after the temperature (None or 0: none)
    log_prior: list[float] | None = opt()  # the training classes' log frequencies


@dataclass(kw_only=True)
class Strategy(Record):
    """One strategy's blend: its members, weights, scores."""

    members: list[str]
    weights: dict[str, float]
    temperature: float | None = opt()  # `calibrate: temperature`: the blend's
    tau: float | None = opt()  # `adjust: logit`: the logit adjustment's τ, chosen on validation
    valid: Score
    valid_scored: str = "direct"  # how the validation score was got (cross-fitted, direct, held out)
    form: str | None = opt()  # stacking: full | diagonal
    test: Score | None = opt()

    def used(self) -> list[str]:
        """The members with a weight above 0."""
        return [n for n, w in self.weights.items() if w > 0]


@dataclass(kw_only=True)
class ModelScores(Record):
    """ensemble/metrics.json `models`: one model as the ensemble saw it (after its temperature, where set)."""

    family: str
    group: str
    valid: Score
    weight: float
    test: Score | None = opt()
    temperature: float | None = opt()
    uncalibrated: dict[str, Score] | None = opt()  # split -> the score before the temperature


@dataclass(kw_only=True)
class Comparison(Record):
    """The submission (a) against one model (b), paired, per split."""

    a: str
    b: str
    valid: Paired
    test: Paired | None = opt()


@dataclass(kw_only=True)
class LeaveOneOut(Record):
    """The chosen strategy refitted without one member, and the full blend against it."""

    without: str
    valid: Score
    full_vs_without: dict[str, Paired]  # split -> paired comparison
    test: Score | None = opt()


@dataclass(kw_only=True)
class ClassCounts(Record):
    """Per class (in class order): rows, the ensemble's and the member's accuracy, fixes and breaks."""

    rows: list[int]
    ensemble: list[float]
    member: list[float]
    fixes: list[int]  # the ensemble right, the member wrong
    breaks: list[int]  # the reverse
    ensemble_report: dict[str, list] | None = opt()  # precision, recall, f1, support per class (scores.class_report)
    member_report: dict[str, list] | None = opt()


@dataclass(kw_only=True)
class PerClass(Record):
    """ensemble/metrics.json `per_class`: the submission against its best member, per class."""

    against: str  # the best member by validation
    valid: ClassCounts
    test: ClassCounts | None = opt()


@dataclass(kw_only=True)
class SizeStep(Record):
    """The accuracy-weighted blend of the k best models by validation."""

    k: int
    added: str
    valid: float
    test: float | None = opt()


@dataclass(kw_only=True)
class EnsembleMetrics(Record):
    """ensemble/metrics.json: the chosen strategy's blend (its fields first), every strategy, every model, and
    the verdicts on the submission."""

    method: str
    chosen: str
    members: list[str]
    weights: dict[str, float]
    temperature: float | None = opt()
    tau: float | None = opt()
    valid: Score
    valid_scored: str = "direct"
    form: str | None = opt()
    test: Score | None = opt()
    fitted_on: str = ""
    metric: str | None = opt()  # what the run is judged by (members, weights, strategy, verdicts); None: accuracy
    metric_why: str | None = opt()
    best_model: str
    best_member: str | None = None  # older metrics: None
    gain: dict[str, float]  # split -> metric − the best model's (by validation)
    gain_over_best_member: dict[str, float] | None = None
    calibrate: str | None = None
    comparisons: list[Comparison] = field(default_factory=list)
    leave_one_out: list[LeaveOneOut] = field(default_factory=list)
    per_class: PerClass | None = None
    by_size: list[SizeStep] = field(default_factory=list)
    strategies: dict[str, Strategy]
    models: dict[str, ModelScores]
    submission: str | None = None

    def judged_by(self) -> str:
        """The run's metric (accuracy where the metrics predate `metric`)."""
        return self.metric or "accuracy"

    def comparison(self, b: str | None) -> Comparison | None:
        """The submission's comparison with model b, if made."""
        return next((c for c in self.comparisons if c.b == b), None)


@dataclass(kw_only=True)
class EqualCompute(Record):
    """bench/results/equal_compute.json: the best member's recipe trained with the ensemble's whole budget."""

    cpu: str = ""
    recipe: str  # the best member by validation
    members: list[str]  # the submission's members with a weight > 0
    budget_s: float  # their training seconds × --scale
    scale: float | None = None  # images seen by the long run / by the member's own
    images_seen: int
    train_s: float
    time_budget: dict
    single_valid: float
    ensemble_valid: float
    comparison: dict[str, Paired]  # split -> the submission against the long run
    single_test: float | None = opt()
    ensemble_test: float | None = opt()
