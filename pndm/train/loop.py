"""The DDPM training loop: eps- (or v-) prediction loss, EMA weights, exact resume, data parallel.

Objective (Ho et al. 2020, Eq. 14, "L_simple"):
    t ~ U{0, ..., T-1},  eps ~ N(0, I),  x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps,
    loss = || eps - eps_theta(x_t, t) ||^2   (or |.| with ``loss="l1"``).
With ``prediction="v_prediction"`` the network learns v = sqrt(ab) eps - sqrt(1-ab) x_0 instead
(Salimans & Ho 2022, sec. 4; :func:`pndm.prediction.training_target`): its x_0 estimate at large t is
-v rather than (x_t - sqrt(1-ab) eps) / sqrt(ab), so an error there is not amplified by
1/sqrt(ab) ~ 100, which is what saturates deterministic samples of a briefly trained eps model.
The checkpoint's ``diffusion.prediction`` records it; engines convert to eps (:mod:`pndm.prediction`).
EMA (DDIM/PNDM repos): ema <- d * ema + (1 - d) * theta after every step, with the warm-up
d_k = min(d, (1 + k) / (10 + k)) so that short runs still average sensibly.

State saved every ``checkpoint_every`` steps and at the end, as one unit (:mod:`pndm.train.checkpoints`)
in ``out``: ``model.safetensors`` (raw weights) and ``ema.safetensors`` (EMA weights), both pndm
checkpoints that ``pndm.models.load`` reads, and ``train_state.safetensors`` (optimizer moments, step,
RNG states) for ``--resume``, which continues bit for bit as an uninterrupted run would. A resumed
run must keep the settings that decide its numbers (:data:`RUN_FIELDS`), unless told otherwise.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from pndm.errors import PndmError
from pndm.models import build_model, load_checkpoint
from pndm.prediction import training_target
from pndm.schedules import make_schedule
from pndm.train.checkpoints import PUBLISHED, foreign_entries, holds_run, read_unit, run_unit, write_unit
from pndm.train.data import fit_resolution, load_images, to_model_range
from pndm.train.presets import CHANGEABLE_FIELDS, RUN_FIELDS, resolve_arch
from pndm.validate import available_device


@dataclass
class TrainConfig:
    data: str
    arch: str
    out: str
    steps: int = 10000
    batch: int = 64
    lr: float = 2e-4
    warmup: int = 200
    ema: float = 0.9999
    loss: str = "l2"
    schedule: str = "linear"
    T: int = 1000
    grad_clip: float = 1.0
    seed: int = 0
    sample_every: int = 0
    checkpoint_every: int = 500
    bf16: bool = False
    resize: bool = False
    init_from: str | None = None
    t_focus: str | None = None
    prediction: str | None = None  # None: the init_from model's, else "epsilon"


def _rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


class Trainer:
    """One training run: data, model, EMA, optimizer and the RNG that drives batches and noise."""

    def __init__(self, config: TrainConfig, device: str = "cpu"):
        self.config = config
        self.notes: list[str] = []  # lines for the user: a setting taken from elsewhere, a slow choice
        self.device = available_device(device)
        self.rank, self.world = _rank_and_world()
        self.out = Path(config.out)
        self.model_config = resolve_arch(config.arch)
        self.schedule = make_schedule(config.schedule, config.T)
        self.alphas_cumprod = self.schedule.alphas_cumprod.to(self.device, torch.float32)

        channels, resolution = self.model_config["in_channels"], self.model_config["resolution"]
        size = (resolution, resolution) if config.resize else None
        images = fit_resolution(load_images(config.data, size), resolution, channels, resize=config.resize)
        if len(images) == 0:
            raise PndmError(f"--data {config.data}: no images found")
        self.images = images  # uint8, scaled per batch to keep memory small
        self.data_sha256 = hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()

        torch.manual_seed(config.seed)  # identical initial weights on every rank
        self.model = build_model("ddpm", self.model_config).to(self.device)
        if config.init_from:
            self._load_initial_weights(config.init_from)
        elif config.prediction is None:
            self.config = replace(config, prediction="epsilon")
        if config.bf16 and self.device.type == "cpu" and not _cpu_has_bf16():
            self.notes.append("warning: --bf16 on a CPU without bf16 instructions (AVX-512 BF16 or AMX) "
                              "trains several times slower than fp32; train without it (--no-bf16)")
        self.t_focus = _parse_t_focus(config.t_focus, config.T)
        self.ema = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.ddp = (
            torch.nn.parallel.DistributedDataParallel(self.model) if self.world > 1 else self.model
        )
        # Batches and noise come from one generator per rank, saved with the state.
        self.generator = torch.Generator().manual_seed(config.seed * 1000 + self.rank)
        self.step = 0

    def _load_initial_weights(self, source: str) -> None:
        """Start from the weights of a pndm checkpoint (``--init-from``); ``default`` = the shipped model.
        Without a prediction of its own the run trains the checkpoint's."""
        from pndm.models.registry import DEFAULT_WEIGHTS

        state, config = load_checkpoint(DEFAULT_WEIGHTS if source == "default" else _init_file(source))
        mine = {k: list(v) if isinstance(v, tuple) else v for k, v in self.model_config.items()}
        if config.get("model") != mine:
            raise PndmError(f"--init-from {source}: its model config differs from --arch {self.config.arch}")
        self.model.load_state_dict(state)
        theirs = config.get("diffusion", {}).get("prediction", "epsilon")
        if self.config.prediction is None:
            self.config = replace(self.config, prediction=theirs)
            self.notes.append(f"note: --init-from {source} is a {theirs} model, so this run trains {theirs} "
                              "(--prediction to change it)")
        elif self.config.prediction != theirs:
            self.notes.append(f"note: --init-from {source} is a {theirs} model; this run fine-tunes it to "
                              f"{self.config.prediction} (--prediction)")

    # ---- one step -------------------------------------------------------------------------
    def _timesteps(self, g: torch.Generator) -> torch.Tensor:
        """t ~ U{0..T-1}; with ``--t-focus START:SHARE`` the first SHARE of the batch ~ U{START..T-1}."""
        t = torch.randint(self.config.T, (self.config.batch,), generator=g)
        if self.t_focus:
            start, share = self.t_focus
            k = round(share * self.config.batch)
            t[:k] = torch.randint(start, self.config.T, (k,), generator=g)
        return t

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = self.generator
        index = torch.randint(len(self.images), (self.config.batch,), generator=g)
        x0 = to_model_range(self.images[index])
        t = self._timesteps(g)
        noise = torch.randn(x0.shape, generator=g)
        return x0.to(self.device), t.to(self.device), noise.to(self.device)

    def train_step(self) -> float:
        x0, t, noise = self._batch()
        ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        self.model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
            output = self.ddp(x_t, t.float())
        target = training_target(self.config.prediction, x0, noise, ab)
        error = output.float() - target
        loss = error.abs().mean() if self.config.loss == "l1" else error.square().mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * min(1.0, (self.step + 1) / max(1, self.config.warmup))
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        return loss.item()

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.config.ema, (1 + self.step) / (10 + self.step))
        for name, value in self.model.state_dict().items():
            if value.dtype.is_floating_point:
                self.ema[name].lerp_(value, 1 - decay)
            else:
                self.ema[name].copy_(value)

    # ---- checkpoints ----------------------------------------------------------------------
    def _checkpoint_config(self) -> dict:
        return {
            "architecture": "ddpm",
            "model": {k: list(v) if isinstance(v, tuple) else v for k, v in self.model_config.items()},
            "diffusion": {"schedule": self.config.schedule, "T": self.config.T,
                          "prediction": self.config.prediction},
            "training": {**asdict(self.config), "step": self.step, "world_size": self.world,
                         "data_sha256": self.data_sha256},
        }

    def _batch_rng_states(self) -> list[torch.Tensor]:
        """Every rank's batch-generator state (gathered to all ranks under torchrun)."""
        state = self.generator.get_state()
        if self.world == 1:
            return [state]
        gathered = [torch.empty_like(state) for _ in range(self.world)]
        dist.all_gather_object(gathered, state)
        return gathered

    def save(self) -> None:
        """Write model, EMA and training state as one checkpoint unit and make it the run's current one."""
        rng_states = self._batch_rng_states()  # collective: every rank takes part
        if self.rank != 0:
            return
        state = {"step": torch.tensor(self.step), "rng.torch": torch.get_rng_state()}
        state.update({f"rng.batches.{rank}": s for rank, s in enumerate(rng_states)})
        for i, param_state in self.optimizer.state_dict()["state"].items():
            for key, value in param_state.items():
                state[f"optim.{i}.{key}"] = torch.as_tensor(value)
        parts = {"model": self.model.state_dict(), "ema": self.ema, "train_state": state}
        write_unit(self.out, self.step, parts, self._checkpoint_config())

    def check_new_run(self) -> None:
        """Refuse to start a run in a folder that already holds one (:func:`refuse_new_run`)."""
        refuse_new_run(self.out)

    def resume(self, allow_change: tuple[str, ...] = ()) -> None:
        """Restore model, EMA, optimizer, step and RNG states from the run's current checkpoint.

        Refuses (one line) a checkpoint whose files are not one unit, and a run whose settings in
        RUN_FIELDS differ from the saved ones, except the fields named in ``allow_change``.
        """
        step, parts = read_unit(self.out)
        unit, adopted = run_unit(self.out)
        if adopted and self.rank == 0:
            self.notes.append(f"note: {self.out} has no 'current' link (a run killed as it saved its first "
                              f"checkpoint, or a copy that lost the link); resuming from {unit}, its newest "
                              "complete checkpoint")
        model_state, saved = parts["model"]
        self._check_same_run(saved, allow_change)
        self.model.load_state_dict(model_state)
        self.ema = {k: v.to(self.device) for k, v in parts["ema"][0].items()}
        state = parts["train_state"][0]
        self.step = step
        torch.set_rng_state(state["rng.torch"])
        saved_world = sum(key.startswith("rng.batches.") for key in state)
        if saved_world != self.world:
            raise PndmError(
                f"--resume: the run in {self.out} was trained with {saved_world} process(es), "
                f"this one has {self.world}; resume with the same --nproc_per_node"
            )
        self.generator.set_state(state[f"rng.batches.{self.rank}"])
        optim_state = self.optimizer.state_dict()
        for key, value in state.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                optim_state["state"].setdefault(int(index), {})[name] = value.to(self.device)
        self.optimizer.load_state_dict(optim_state)
        if self.config.steps <= self.step:
            raise PndmError(
                f"--steps {self.config.steps}: the run in {self.out} is already at step {self.step}; "
                "--steps is the total, give a larger one"
            )

    def _check_same_run(self, saved: dict, allow_change: tuple[str, ...]) -> None:
        training = saved.get("training", {})
        now = {**asdict(self.config), "arch": self._checkpoint_config()["model"], "data": self.data_sha256}
        before = {**training, "arch": saved.get("model"), "data": training.get("data_sha256"),
                  "prediction": training.get("prediction", "epsilon")}  # runs saved before the field
        if before["data"] is None:  # a run saved before data hashes: compare the --data value
            now["data"], before["data"] = self.config.data, training.get("data")
        for option, field in RUN_FIELDS.items():
            if option in allow_change or now[field] == before.get(field):
                continue
            if option == "arch":
                detail = "the model config differs"
            elif option == "data" and self.config.resize != training.get("resize", False):
                option = "resize"  # what made the images differ
                detail = f"saved {not self.config.resize}, now {self.config.resize}; the images differ"
            elif option == "data":
                detail = "the training images differ"
            else:
                detail = f"saved {before.get(field)!r}, now {now[field]!r}"
            hint = f" (or --allow-change {option})" if option in CHANGEABLE_FIELDS else ""
            raise PndmError(
                f"--resume: --{option} differs from the run in {self.out} ({detail}); "
                f"pass the run's value{hint} or start a new --out"
            )

    # ---- the run --------------------------------------------------------------------------
    def run(self, on_sample=None, progress: bool = True) -> None:
        cfg = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        # The context closes the bar (ending its line) before an error is printed, so that stays one line.
        with tqdm(total=cfg.steps, initial=self.step, desc="train", disable=self.rank != 0 or not progress,
                  dynamic_ncols=True) as bar:
            while self.step < cfg.steps:
                loss = self.train_step()
                if not math.isfinite(loss):
                    raise PndmError(f"loss became {loss} at step {self.step}; lower --lr or check the data")
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save()
                if on_sample and cfg.sample_every and self.step % cfg.sample_every == 0 and self.rank == 0:
                    on_sample(self)


def refuse_new_run(out: Path) -> None:
    """Refuse a new run into a folder that already holds one (it would be overwritten), that holds files
    at the names the run publishes, or whose ``checkpoints/`` holds anything but a killed run's temporary
    units (a new run writes there)."""
    if holds_run(out):
        raise PndmError(f"--out {out} already holds a training run; continue it with --resume "
                        "or choose a new --out")
    taken = [name for name in (*PUBLISHED, "train_state.json") if os.path.lexists(out / name)]
    if taken:  # the run publishes links at these names, and its cleanup removes train_state.json
        raise PndmError(f"--out {out} holds {', '.join(taken)}, names pndm-train writes itself; move them "
                        "elsewhere or choose another --out")
    foreign = foreign_entries(out)
    if not foreign:
        return
    folder = out / "checkpoints"
    if foreign == ["checkpoints"] and not folder.is_dir():
        raise PndmError(f"--out {out}: {folder} is a file, and pndm-train keeps its checkpoints in that "
                        "folder; move the file elsewhere or choose another --out")
    names = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    raise PndmError(
        f"--out {out}: {folder} already holds {names}, not a training run's checkpoint; pndm-train keeps "
        "its own checkpoints there, so move them elsewhere or choose another --out"
    )


def _init_file(source: str) -> Path:
    """The file ``--init-from`` names, refused in one line where it is not a pndm checkpoint file."""
    path = Path(source)
    wanted = "--init-from takes a pndm .safetensors checkpoint (e.g. a run's ema.safetensors) or 'default'"
    if path.is_dir():
        raise PndmError(f"--init-from {source} is a folder; {wanted}")
    torch_file = path.is_file() and _is_torch_file(path)
    if torch_file or (path.is_file() and path.suffix != ".safetensors"):
        kind = "a torch file, not a pndm checkpoint" if torch_file else "not a pndm checkpoint"
        raise PndmError(f"--init-from {source} is {kind}; {wanted}: save other weights as one with "
                        "pndm.models.save_checkpoint (docs/MODELS.md)")
    return path


def _is_torch_file(path: Path) -> bool:
    """A torch.save file: a zip archive, or a bare pickle (protocol 2 to 5), not a safetensors file (an
    8-byte header length, then its JSON header's "{", which may also start with 0x80)."""
    with open(path, "rb") as f:
        head = f.read(9)
    pickle = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    return head[:4] == b"PK\x03\x04" or (pickle and head[8:9] != b"{")


def _parse_t_focus(value: str | None, T: int) -> tuple[int, float] | None:
    """``START:SHARE`` -> (START, SHARE), checked against T."""
    if not value:
        return None
    try:
        start, share = value.split(":")
        start, share = int(start), float(share)
    except ValueError:
        raise PndmError(f"--t-focus {value}: expected START:SHARE, e.g. 700:0.5") from None
    if not (0 <= start < T and 0.0 <= share <= 1.0):
        raise PndmError(f"--t-focus {value}: START must be in [0, {T - 1}] and SHARE in [0, 1]")
    return start, share


def _cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX-512 BF16 or AMX); True for CPUs other than x86."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def init_distributed() -> None:
    """Join the torchrun process group when launched with WORLD_SIZE > 1 (gloo on CPU, nccl on GPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
