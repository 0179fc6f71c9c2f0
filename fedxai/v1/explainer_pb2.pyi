from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CamMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAM_METHOD_UNSPECIFIED: _ClassVar[CamMethod]
    CAM_METHOD_GRAD_CAM: _ClassVar[CamMethod]
    CAM_METHOD_GRAD_CAM_PLUS_PLUS: _ClassVar[CamMethod]
    CAM_METHOD_HIRES_CAM: _ClassVar[CamMethod]
    CAM_METHOD_XGRAD_CAM: _ClassVar[CamMethod]
    CAM_METHOD_LAYER_CAM: _ClassVar[CamMethod]
    CAM_METHOD_AUTO: _ClassVar[CamMethod]

class TargetClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TARGET_CLASS_UNSPECIFIED: _ClassVar[TargetClass]
    TARGET_CLASS_TRUE_LABEL: _ClassVar[TargetClass]
    TARGET_CLASS_PREDICTED: _ClassVar[TargetClass]

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_UINT8: _ClassVar[DType]

class Subject(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUBJECT_UNSPECIFIED: _ClassVar[Subject]
    SUBJECT_CLIENT_EVALUATION: _ClassVar[Subject]
    SUBJECT_GLOBAL_MODEL: _ClassVar[Subject]
    SUBJECT_CLIENT_UPDATE: _ClassVar[Subject]

class Scoring(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCORING_UNSPECIFIED: _ClassVar[Scoring]
    SCORING_IN_REPLY: _ClassVar[Scoring]
    SCORING_AFTER_REPLY: _ClassVar[Scoring]
    SCORING_SKIP: _ClassVar[Scoring]
CAM_METHOD_UNSPECIFIED: CamMethod
CAM_METHOD_GRAD_CAM: CamMethod
CAM_METHOD_GRAD_CAM_PLUS_PLUS: CamMethod
CAM_METHOD_HIRES_CAM: CamMethod
CAM_METHOD_XGRAD_CAM: CamMethod
CAM_METHOD_LAYER_CAM: CamMethod
CAM_METHOD_AUTO: CamMethod
TARGET_CLASS_UNSPECIFIED: TargetClass
TARGET_CLASS_TRUE_LABEL: TargetClass
TARGET_CLASS_PREDICTED: TargetClass
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_UINT8: DType
SUBJECT_UNSPECIFIED: Subject
SUBJECT_CLIENT_EVALUATION: Subject
SUBJECT_GLOBAL_MODEL: Subject
SUBJECT_CLIENT_UPDATE: Subject
SCORING_UNSPECIFIED: Scoring
SCORING_IN_REPLY: Scoring
SCORING_AFTER_REPLY: Scoring
SCORING_SKIP: Scoring

class InlineModel(_message.Message):
    __slots__ = ("architecture", "safetensors")
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    SAFETENSORS_FIELD_NUMBER: _ClassVar[int]
    architecture: str
    safetensors: bytes
    def __init__(self, architecture: _Optional[str] = ..., safetensors: _Optional[bytes] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("key", "architecture", "sha256")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    key: str
    architecture: str
    sha256: str
    def __init__(self, key: _Optional[str] = ..., architecture: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class EncodedImages(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, images: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Normalization(_message.Message):
    __slots__ = ("mean", "std")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("task_id", "round", "client_id", "subject", "run_id", "inline_model", "model_ref", "tensor", "images", "labels", "normalization", "method", "target_layer", "target", "store", "scoring", "class_names")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    INLINE_MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_REF_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_LAYER_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    SCORING_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    round: int
    client_id: str
    subject: Subject
    run_id: str
    inline_model: InlineModel
    model_ref: ModelRef
    tensor: Tensor
    images: EncodedImages
    labels: _containers.RepeatedScalarFieldContainer[int]
    normalization: Normalization
    method: CamMethod
    target_layer: str
    target: TargetClass
    store: bool
    scoring: Scoring
    class_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_id: _Optional[str] = ..., round: _Optional[int] = ..., client_id: _Optional[str] = ..., subject: _Optional[_Union[Subject, str]] = ..., run_id: _Optional[str] = ..., inline_model: _Optional[_Union[InlineModel, _Mapping]] = ..., model_ref: _Optional[_Union[ModelRef, _Mapping]] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ..., images: _Optional[_Union[EncodedImages, _Mapping]] = ..., labels: _Optional[_Iterable[int]] = ..., normalization: _Optional[_Union[Normalization, _Mapping]] = ..., method: _Optional[_Union[CamMethod, str]] = ..., target_layer: _Optional[str] = ..., target: _Optional[_Union[TargetClass, str]] = ..., store: _Optional[bool] = ..., scoring: _Optional[_Union[Scoring, str]] = ..., class_names: _Optional[_Iterable[str]] = ...) -> None: ...

class SampleExplanation(_message.Message):
    __slots__ = ("index", "true_label", "predicted_class", "probability", "explained_class", "cam_max", "cam_mean", "degenerate", "cam_height", "cam_width", "cam", "method", "weak")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TRUE_LABEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    EXPLAINED_CLASS_FIELD_NUMBER: _ClassVar[int]
    CAM_MAX_FIELD_NUMBER: _ClassVar[int]
    CAM_MEAN_FIELD_NUMBER: _ClassVar[int]
    DEGENERATE_FIELD_NUMBER: _ClassVar[int]
    CAM_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CAM_WIDTH_FIELD_NUMBER: _ClassVar[int]
    CAM_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    WEAK_FIELD_NUMBER: _ClassVar[int]
    index: int
    true_label: int
    predicted_class: int
    probability: float
    explained_class: int
    cam_max: float
    cam_mean: float
    degenerate: bool
    cam_height: int
    cam_width: int
    cam: _containers.RepeatedScalarFieldContainer[float]
    method: str
    weak: bool
    def __init__(self, index: _Optional[int] = ..., true_label: _Optional[int] = ..., predicted_class: _Optional[int] = ..., probability: _Optional[float] = ..., explained_class: _Optional[int] = ..., cam_max: _Optional[float] = ..., cam_mean: _Optional[float] = ..., degenerate: _Optional[bool] = ..., cam_height: _Optional[int] = ..., cam_width: _Optional[int] = ..., cam: _Optional[_Iterable[float]] = ..., method: _Optional[str] = ..., weak: _Optional[bool] = ...) -> None: ...

class Faithfulness(_message.Message):
    __slots__ = ("method", "morf_auc", "lerf_auc", "gap", "degenerate")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    MORF_AUC_FIELD_NUMBER: _ClassVar[int]
    LERF_AUC_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    DEGENERATE_FIELD_NUMBER: _ClassVar[int]
    method: str
    morf_auc: float
    lerf_auc: float
    gap: float
    degenerate: bool
    def __init__(self, method: _Optional[str] = ..., morf_auc: _Optional[float] = ..., lerf_auc: _Optional[float] = ..., gap: _Optional[float] = ..., degenerate: _Optional[bool] = ...) -> None: ...

class MethodSanity(_message.Message):
    __slots__ = ("method", "spearman", "passed")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SPEARMAN_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    method: str
    spearman: _containers.RepeatedScalarFieldContainer[float]
    passed: bool
    def __init__(self, method: _Optional[str] = ..., spearman: _Optional[_Iterable[float]] = ..., passed: _Optional[bool] = ...) -> None: ...

class SanityCheck(_message.Message):
    __slots__ = ("randomised_layers", "threshold", "methods", "samples")
    RANDOMISED_LAYERS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    randomised_layers: _containers.RepeatedScalarFieldContainer[str]
    threshold: float
    methods: _containers.RepeatedCompositeFieldContainer[MethodSanity]
    samples: int
    def __init__(self, randomised_layers: _Optional[_Iterable[str]] = ..., threshold: _Optional[float] = ..., methods: _Optional[_Iterable[_Union[MethodSanity, _Mapping]]] = ..., samples: _Optional[int] = ...) -> None: ...

class ClassImage(_message.Message):
    __slots__ = ("label", "sample_index", "predicted_class", "probability", "key", "url", "jpeg", "method", "cam_max", "degenerate", "weak", "faithfulness")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_INDEX_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    JPEG_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CAM_MAX_FIELD_NUMBER: _ClassVar[int]
    DEGENERATE_FIELD_NUMBER: _ClassVar[int]
    WEAK_FIELD_NUMBER: _ClassVar[int]
    FAITHFULNESS_FIELD_NUMBER: _ClassVar[int]
    label: int
    sample_index: int
    predicted_class: int
    probability: float
    key: str
    url: str
    jpeg: bytes
    method: str
    cam_max: float
    degenerate: bool
    weak: bool
    faithfulness: _containers.RepeatedCompositeFieldContainer[Faithfulness]
    def __init__(self, label: _Optional[int] = ..., sample_index: _Optional[int] = ..., predicted_class: _Optional[int] = ..., probability: _Optional[float] = ..., key: _Optional[str] = ..., url: _Optional[str] = ..., jpeg: _Optional[bytes] = ..., method: _Optional[str] = ..., cam_max: _Optional[float] = ..., degenerate: _Optional[bool] = ..., weak: _Optional[bool] = ..., faithfulness: _Optional[_Iterable[_Union[Faithfulness, _Mapping]]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("samples", "images", "manifest_key", "method", "target_layer", "model_sha256", "sanity", "replacement")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_KEY_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_LAYER_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    SANITY_FIELD_NUMBER: _ClassVar[int]
    REPLACEMENT_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[SampleExplanation]
    images: _containers.RepeatedCompositeFieldContainer[ClassImage]
    manifest_key: str
    method: str
    target_layer: str
    model_sha256: str
    sanity: SanityCheck
    replacement: str
    def __init__(self, samples: _Optional[_Iterable[_Union[SampleExplanation, _Mapping]]] = ..., images: _Optional[_Iterable[_Union[ClassImage, _Mapping]]] = ..., manifest_key: _Optional[str] = ..., method: _Optional[str] = ..., target_layer: _Optional[str] = ..., model_sha256: _Optional[str] = ..., sanity: _Optional[_Union[SanityCheck, _Mapping]] = ..., replacement: _Optional[str] = ...) -> None: ...

class ListExplanationsRequest(_message.Message):
    __slots__ = ("task_id", "round", "client_id", "subjects", "run_id", "adhoc")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ADHOC_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    round: int
    client_id: str
    subjects: _containers.RepeatedScalarFieldContainer[Subject]
    run_id: str
    adhoc: bool
    def __init__(self, task_id: _Optional[str] = ..., round: _Optional[int] = ..., client_id: _Optional[str] = ..., subjects: _Optional[_Iterable[_Union[Subject, str]]] = ..., run_id: _Optional[str] = ..., adhoc: _Optional[bool] = ...) -> None: ...

class Comparison(_message.Message):
    __slots__ = ("distance_to_global", "distance_to_clients", "z_score", "flagged", "drift")
    DISTANCE_TO_GLOBAL_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_TO_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    Z_SCORE_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    distance_to_global: float
    distance_to_clients: float
    z_score: float
    flagged: bool
    drift: float
    def __init__(self, distance_to_global: _Optional[float] = ..., distance_to_clients: _Optional[float] = ..., z_score: _Optional[float] = ..., flagged: _Optional[bool] = ..., drift: _Optional[float] = ...) -> None: ...

class StoredExplanation(_message.Message):
    __slots__ = ("key", "url", "task_id", "round", "client_id", "label", "predicted_class", "probability", "method", "target_layer", "model_sha256", "cam_max", "cam_mean", "degenerate", "created_at", "weak", "faithfulness", "sanity_spearman", "sanity_passed", "subject", "comparison", "run_id", "class_name", "predicted_class_name")
    KEY_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_LAYER_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    CAM_MAX_FIELD_NUMBER: _ClassVar[int]
    CAM_MEAN_FIELD_NUMBER: _ClassVar[int]
    DEGENERATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    WEAK_FIELD_NUMBER: _ClassVar[int]
    FAITHFULNESS_FIELD_NUMBER: _ClassVar[int]
    SANITY_SPEARMAN_FIELD_NUMBER: _ClassVar[int]
    SANITY_PASSED_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    key: str
    url: str
    task_id: str
    round: int
    client_id: str
    label: int
    predicted_class: int
    probability: float
    method: str
    target_layer: str
    model_sha256: str
    cam_max: float
    cam_mean: float
    degenerate: bool
    created_at: str
    weak: bool
    faithfulness: _containers.RepeatedCompositeFieldContainer[Faithfulness]
    sanity_spearman: float
    sanity_passed: bool
    subject: Subject
    comparison: Comparison
    run_id: str
    class_name: str
    predicted_class_name: str
    def __init__(self, key: _Optional[str] = ..., url: _Optional[str] = ..., task_id: _Optional[str] = ..., round: _Optional[int] = ..., client_id: _Optional[str] = ..., label: _Optional[int] = ..., predicted_class: _Optional[int] = ..., probability: _Optional[float] = ..., method: _Optional[str] = ..., target_layer: _Optional[str] = ..., model_sha256: _Optional[str] = ..., cam_max: _Optional[float] = ..., cam_mean: _Optional[float] = ..., degenerate: _Optional[bool] = ..., created_at: _Optional[str] = ..., weak: _Optional[bool] = ..., faithfulness: _Optional[_Iterable[_Union[Faithfulness, _Mapping]]] = ..., sanity_spearman: _Optional[float] = ..., sanity_passed: _Optional[bool] = ..., subject: _Optional[_Union[Subject, str]] = ..., comparison: _Optional[_Union[Comparison, _Mapping]] = ..., run_id: _Optional[str] = ..., class_name: _Optional[str] = ..., predicted_class_name: _Optional[str] = ...) -> None: ...

class ListExplanationsResponse(_message.Message):
    __slots__ = ("explanations",)
    EXPLANATIONS_FIELD_NUMBER: _ClassVar[int]
    explanations: _containers.RepeatedCompositeFieldContainer[StoredExplanation]
    def __init__(self, explanations: _Optional[_Iterable[_Union[StoredExplanation, _Mapping]]] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Architecture(_message.Message):
    __slots__ = ("name", "input_shape", "num_classes", "default_target_layer", "conv_layers", "default_mean", "default_std", "target_layers", "class_names", "provided_by")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TARGET_LAYER_FIELD_NUMBER: _ClassVar[int]
    CONV_LAYERS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MEAN_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_STD_FIELD_NUMBER: _ClassVar[int]
    TARGET_LAYERS_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    PROVIDED_BY_FIELD_NUMBER: _ClassVar[int]
    name: str
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    num_classes: int
    default_target_layer: str
    conv_layers: _containers.RepeatedScalarFieldContainer[str]
    default_mean: _containers.RepeatedScalarFieldContainer[float]
    default_std: _containers.RepeatedScalarFieldContainer[float]
    target_layers: _containers.RepeatedScalarFieldContainer[str]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    provided_by: str
    def __init__(self, name: _Optional[str] = ..., input_shape: _Optional[_Iterable[int]] = ..., num_classes: _Optional[int] = ..., default_target_layer: _Optional[str] = ..., conv_layers: _Optional[_Iterable[str]] = ..., default_mean: _Optional[_Iterable[float]] = ..., default_std: _Optional[_Iterable[float]] = ..., target_layers: _Optional[_Iterable[str]] = ..., class_names: _Optional[_Iterable[str]] = ..., provided_by: _Optional[str] = ...) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("version", "methods", "architectures", "max_message_bytes", "max_batch_size", "storage")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    version: str
    methods: _containers.RepeatedScalarFieldContainer[str]
    architectures: _containers.RepeatedCompositeFieldContainer[Architecture]
    max_message_bytes: int
    max_batch_size: int
    storage: str
    def __init__(self, version: _Optional[str] = ..., methods: _Optional[_Iterable[str]] = ..., architectures: _Optional[_Iterable[_Union[Architecture, _Mapping]]] = ..., max_message_bytes: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., storage: _Optional[str] = ...) -> None: ...
