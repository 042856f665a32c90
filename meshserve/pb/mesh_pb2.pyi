from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InstanceState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INSTANCE_STATE_UNSPECIFIED: _ClassVar[InstanceState]
    LOADING: _ClassVar[InstanceState]
    READY: _ClassVar[InstanceState]
    UNAVAILABLE: _ClassVar[InstanceState]
    STOPPING: _ClassVar[InstanceState]
INSTANCE_STATE_UNSPECIFIED: InstanceState
LOADING: InstanceState
READY: InstanceState
UNAVAILABLE: InstanceState
STOPPING: InstanceState

class Param(_message.Message):
    __slots__ = ("bool_param", "int64_param", "string_param", "double_param", "uint64_param")
    BOOL_PARAM_FIELD_NUMBER: _ClassVar[int]
    INT64_PARAM_FIELD_NUMBER: _ClassVar[int]
    STRING_PARAM_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_PARAM_FIELD_NUMBER: _ClassVar[int]
    UINT64_PARAM_FIELD_NUMBER: _ClassVar[int]
    bool_param: bool
    int64_param: int
    string_param: str
    double_param: float
    uint64_param: int
    def __init__(self, bool_param: bool = ..., int64_param: _Optional[int] = ..., string_param: _Optional[str] = ..., double_param: _Optional[float] = ..., uint64_param: _Optional[int] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "datatype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("request_id", "model_name", "model_version", "inputs", "requested_outputs", "parameters", "deadline_unix_ns", "priority", "trace_id", "batch_size", "timeout_us", "traceparent")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Param
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Param, _Mapping]] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_US_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model_name: str
    model_version: int
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    requested_outputs: _containers.RepeatedScalarFieldContainer[str]
    parameters: _containers.MessageMap[str, Param]
    deadline_unix_ns: int
    priority: int
    trace_id: str
    batch_size: int
    timeout_us: int
    traceparent: str
    def __init__(self, request_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., requested_outputs: _Optional[_Iterable[str]] = ..., parameters: _Optional[_Mapping[str, Param]] = ..., deadline_unix_ns: _Optional[int] = ..., priority: _Optional[int] = ..., trace_id: _Optional[str] = ..., batch_size: _Optional[int] = ..., timeout_us: _Optional[int] = ..., traceparent: _Optional[str] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("queue_ns", "compute_input_ns", "compute_infer_ns", "compute_output_ns", "batch_rows", "counts_execution", "transfer_ns")
    QUEUE_NS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_INPUT_NS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_INFER_NS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_OUTPUT_NS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_EXECUTION_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_NS_FIELD_NUMBER: _ClassVar[int]
    queue_ns: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int
    batch_rows: int
    counts_execution: bool
    transfer_ns: int
    def __init__(self, queue_ns: _Optional[int] = ..., compute_input_ns: _Optional[int] = ..., compute_infer_ns: _Optional[int] = ..., compute_output_ns: _Optional[int] = ..., batch_rows: _Optional[int] = ..., counts_execution: bool = ..., transfer_ns: _Optional[int] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("request_id", "model_name", "model_version", "outputs", "error", "parameters", "timing", "more")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Param
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Param, _Mapping]] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model_name: str
    model_version: int
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    error: Error
    parameters: _containers.MessageMap[str, Param]
    timing: Timing
    more: bool
    def __init__(self, request_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., parameters: _Optional[_Mapping[str, Param]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., more: bool = ...) -> None: ...

class BatchItem(_message.Message):
    __slots__ = ("request", "reply_to", "queue_ns", "dispatch_unix_ns")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    QUEUE_NS_FIELD_NUMBER: _ClassVar[int]
    DISPATCH_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    request: bytes
    reply_to: str
    queue_ns: int
    dispatch_unix_ns: int
    def __init__(self, request: _Optional[bytes] = ..., reply_to: _Optional[str] = ..., queue_ns: _Optional[int] = ..., dispatch_unix_ns: _Optional[int] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("batch_id", "items")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    items: _containers.RepeatedCompositeFieldContainer[BatchItem]
    def __init__(self, batch_id: _Optional[int] = ..., items: _Optional[_Iterable[_Union[BatchItem, _Mapping]]] = ...) -> None: ...

class BatchDone(_message.Message):
    __slots__ = ("batch_id", "error")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    error: Error
    def __init__(self, batch_id: _Optional[int] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class WorkerAnnouncement(_message.Message):
    __slots__ = ("instance_id", "model_name", "model_version", "state", "reason", "address", "model_config", "max_inflight_batches", "heartbeat_interval_s", "platform")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MODEL_CONFIG_FIELD_NUMBER: _ClassVar[int]
    MAX_INFLIGHT_BATCHES_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    model_name: str
    model_version: int
    state: InstanceState
    reason: str
    address: str
    model_config: bytes
    max_inflight_batches: int
    heartbeat_interval_s: float
    platform: str
    def __init__(self, instance_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., state: _Optional[_Union[InstanceState, str]] = ..., reason: _Optional[str] = ..., address: _Optional[str] = ..., model_config: _Optional[bytes] = ..., max_inflight_batches: _Optional[int] = ..., heartbeat_interval_s: _Optional[float] = ..., platform: _Optional[str] = ...) -> None: ...

class ControlRequest(_message.Message):
    __slots__ = ("model_name", "load", "config_json", "files", "unload_dependents")
    class FilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    UNLOAD_DEPENDENTS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    load: bool
    config_json: str
    files: _containers.ScalarMap[str, bytes]
    unload_dependents: bool
    def __init__(self, model_name: _Optional[str] = ..., load: bool = ..., config_json: _Optional[str] = ..., files: _Optional[_Mapping[str, bytes]] = ..., unload_dependents: bool = ...) -> None: ...

class ControlReply(_message.Message):
    __slots__ = ("error",)
    ERROR_FIELD_NUMBER: _ClassVar[int]
    error: Error
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class StageSampling(_message.Message):
    __slots__ = ("temperature", "top_k", "top_p", "has_seed", "seed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    HAS_SEED_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    top_p: float
    has_seed: bool
    seed: int
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., has_seed: bool = ..., seed: _Optional[int] = ...) -> None: ...

class StageSeq(_message.Message):
    __slots__ = ("seq_id", "start", "length", "capacity", "sampling", "reply_to", "request_id")
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    seq_id: int
    start: int
    length: int
    capacity: int
    sampling: StageSampling
    reply_to: str
    request_id: str
    def __init__(self, seq_id: _Optional[int] = ..., start: _Optional[int] = ..., length: _Optional[int] = ..., capacity: _Optional[int] = ..., sampling: _Optional[_Union[StageSampling, _Mapping]] = ..., reply_to: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class StageStep(_message.Message):
    __slots__ = ("step_id", "seqs", "hidden", "dtype", "free", "sent_unix_ns", "traceparent")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    SEQS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    step_id: int
    seqs: _containers.RepeatedCompositeFieldContainer[StageSeq]
    hidden: bytes
    dtype: str
    free: _containers.RepeatedScalarFieldContainer[int]
    sent_unix_ns: int
    traceparent: str
    def __init__(self, step_id: _Optional[int] = ..., seqs: _Optional[_Iterable[_Union[StageSeq, _Mapping]]] = ..., hidden: _Optional[bytes] = ..., dtype: _Optional[str] = ..., free: _Optional[_Iterable[int]] = ..., sent_unix_ns: _Optional[int] = ..., traceparent: _Optional[str] = ...) -> None: ...

class StageTokens(_message.Message):
    __slots__ = ("step_id", "seq_ids", "tokens")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    step_id: int
    seq_ids: _containers.RepeatedScalarFieldContainer[int]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, step_id: _Optional[int] = ..., seq_ids: _Optional[_Iterable[int]] = ..., tokens: _Optional[_Iterable[int]] = ...) -> None: ...

class StageFrame(_message.Message):
    __slots__ = ("step", "tokens")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    step: StageStep
    tokens: StageTokens
    def __init__(self, step: _Optional[_Union[StageStep, _Mapping]] = ..., tokens: _Optional[_Union[StageTokens, _Mapping]] = ...) -> None: ...

class StageAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StageAnnouncement(_message.Message):
    __slots__ = ("instance_id", "model_name", "model_version", "stage", "stages", "state", "reason", "address", "kv_sequences", "kv_tokens", "layer_start", "layer_end", "metrics", "linked")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    KV_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    KV_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LAYER_START_FIELD_NUMBER: _ClassVar[int]
    LAYER_END_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LINKED_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    model_name: str
    model_version: int
    stage: int
    stages: int
    state: InstanceState
    reason: str
    address: str
    kv_sequences: int
    kv_tokens: int
    layer_start: int
    layer_end: int
    metrics: str
    linked: bool
    def __init__(self, instance_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., stage: _Optional[int] = ..., stages: _Optional[int] = ..., state: _Optional[_Union[InstanceState, str]] = ..., reason: _Optional[str] = ..., address: _Optional[str] = ..., kv_sequences: _Optional[int] = ..., kv_tokens: _Optional[int] = ..., layer_start: _Optional[int] = ..., layer_end: _Optional[int] = ..., metrics: _Optional[str] = ..., linked: bool = ...) -> None: ...

class StageFault(_message.Message):
    __slots__ = ("model_name", "model_version", "stage", "message")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: int
    stage: int
    message: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., stage: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...
