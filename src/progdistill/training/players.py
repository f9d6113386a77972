"""A phase that trains several networks ("players") against one objective: distribution matching (a generator, its
online fake score and a discriminator head) and adversarial progressive distillation (a student and a head).

Every player has its own Adam, learning-rate schedule, optional EMA, gradient clipping and number of updates per
step (a fake score updated several times per generator update, DMD2's two time-scale rule). One step of the phase
runs the players in their order, each for its updates, each update on a fresh micro-batch of the data; in a player's
update only its own weights take gradients (the others' are switched off, and called unwrapped from data-parallel
training, so no all-reduce waits on them). The objective returns each player's loss, the way EDM's loss objects
return one value, and the loop owns the rest, as the one-player loop (training/loop.py) does: the NaN guard over
every player, logging, checkpoints holding every player's weights, optimizer, EMA and the network evaluations
counted so far, and exact resume. The first player is the phase's student: it is saved as "model"/"ema" as any
student, the others under "player.NAME.". One-player phases never come here (they run training/loop.py unchanged).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import conditioning
from ..checkpoint import CheckpointError, checkpoint_paths, load_tensors, prune, read_record, save_checkpoint
from ..nets.base import enable_gradient_checkpointing
from .counting import EvalCounter
from .loop import HISTORY_EVERY, SMOOTHING, DROPOUT_SEED_OFFSET, NonFiniteLossError, OptimSettings, make_ema
from .phase import Phase, PhaseResult, Run, _finish, _saving, run_phase
from .resume import latest_loadable

PLAYER = "player"  # checkpoint keys of the players after the first: player.NAME.model.*, player.NAME.ema.*


@dataclass
class Player:
    """One network a players phase trains: `updates` optimizer steps of it per phase step."""

    name: str
    module: nn.Module
    settings: OptimSettings
    updates: int = 1


class PlayersObjective(Protocol):
    """What a players phase trains: `players(student)` lists them (the student first), `loss(name, x, labels,
    generator, shard, nets, counter)` is player `name`'s loss on this process's rows (x, labels) of a global batch,
    with `nets` the players' callables by name (the updating one live, the others frozen) and `counter` the
    network-evaluation counter its calls go through."""

    def players(self, student: nn.Module) -> list[Player]: ...

    def loss(self, name: str, x: Tensor, labels: Tensor | None, generator: torch.Generator, shard, nets: dict,
             counter: EvalCounter) -> Tensor: ...


@dataclass
class _State:
    player: Player
    model: nn.Module  # as prepared by accelerate
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: torch.optim.swa_utils.AveragedModel | None
    trainable: list[nn.Parameter]
    running: float | None = None
    history: list = field(default_factory=list)
    updates: int = 0

    @property
    def raw(self) -> nn.Module:
        return self.player.module


class PlayersLoop:
    """The state of a players phase: each player's prepared network, optimizer, schedule and EMA, the objective's
    generator and the counted evaluations; `step` runs one phase step."""

    def __init__(self, players: list[Player], run: Run, seed: int, grad_accum: int, total: int,
                 resume: dict | None):
        self.accelerator, self.grad_accum, self.total = run.accelerator, grad_accum, total
        self.shard = (run.accelerator.process_index, run.accelerator.num_processes)
        self.generator = torch.Generator(device=run.accelerator.device).manual_seed(seed)
        self.counter, self.first, self.pending, self.last = EvalCounter(run.accelerator.num_processes), 1, [], {}
        self.states: list[_State] = []
        for player in players:
            if getattr(getattr(getattr(run, "cfg", None), "perf", None), "gradient_checkpointing", False):
                enable_gradient_checkpointing(player.module)
            trainable = [p for p in player.module.parameters() if p.requires_grad]
            s = player.settings
            optimizer = torch.optim.Adam(trainable, lr=s.lr, betas=s.betas)
            ema = make_ema(player.module, s.ema_decay)
            self.states.append(_State(player, player.module, optimizer, None, ema, trainable))
        if resume is not None:
            self._restore(resume)
        else:
            torch.manual_seed(seed + DROPOUT_SEED_OFFSET)
        for st in self.states:  # last_epoch = updates - 1, and the constructor's step(): lr = lr * factor(updates)
            st.scheduler = torch.optim.lr_scheduler.LambdaLR(st.optimizer, st.player.settings.lr_factor,
                                                             last_epoch=st.updates - 1)
            st.model, st.optimizer = self.accelerator.prepare(st.player.module, st.optimizer)
            st.model.train()

    def _restore(self, resume: dict) -> None:
        self.first = int(resume["step"]) + 1
        self.generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        self.counter.load_state_dict(resume["evals"])
        for st in self.states:
            saved = resume["players"][st.player.name]
            st.optimizer.load_state_dict(saved["optimizer"])
            st.updates, st.running = int(saved["updates"]), saved["running"]
            st.history = [tuple(h) for h in saved["history"]]
            if st.ema is not None:
                st.ema.n_averaged.fill_(int(saved["ema_n_averaged"]))

    def nets(self, live: _State) -> dict[str, nn.Module]:
        """The players' callables in `live`'s update: its prepared network, the others' unwrapped ones."""
        return {st.player.name: (st.model if st is live else st.raw) for st in self.states}

    def update(self, st: _State, batches, objective: PlayersObjective) -> None:
        """One optimizer step of player `st` over grad_accum micro-batches; only its weights take gradients."""
        for other in self.states:
            other.optimizer.zero_grad(set_to_none=True)
            for p in other.trainable:
                p.requires_grad_(other is st)
        losses, nets = [], self.nets(st)
        for micro in range(self.grad_accum):
            x, labels = next(batches)
            x = x.to(self.accelerator.device, non_blocking=True)
            labels = conditioning.to(labels, self.accelerator.device)
            last = micro == self.grad_accum - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(st.model):
                with self.accelerator.autocast():
                    loss = objective.loss(st.player.name, x, labels, self.generator, self.shard, nets,
                                          self.counter) / self.grad_accum
                self.accelerator.backward(loss)
            losses.append((self.accelerator.reduce(loss.detach(), reduction="mean") if self.shard[1] > 1
                           else loss).detach())
        clip = st.player.settings.grad_clip
        norm = self.accelerator.clip_grad_norm_(st.trainable, clip) if clip > 0 else None
        st.optimizer.step()
        st.scheduler.step()
        st.updates += 1
        if st.ema is not None:
            st.ema.update_parameters(st.raw)
        self.pending.append((st, losses, norm))

    def step(self, step: int, batches, objective: PlayersObjective) -> None:
        for st in self.states:
            for _ in range(st.player.updates):
                self.update(st, batches, objective)
        for st in self.states:  # every player trainable again between steps (as outside the phase)
            for p in st.trainable:
                p.requires_grad_(True)
        self.pending.append((step, None, None))

    def flush(self) -> None:
        """Read the pending updates' losses and norms back (one sync) and check every player's; NonFiniteLossError
        at the first non-finite one."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        values = [torch.stack([x.float() for x in losses]).sum() if losses else None for _, losses, _ in pending]
        norms = [norm for _, _, norm in pending]
        read = torch.stack([v for v in values if v is not None] + [n.float() for n in norms if n is not None]).tolist()
        at_v, at_n, step_values = 0, sum(v is not None for v in values), {}
        for (st, losses, norm), value in zip(pending, values):
            if losses is None:  # the end of phase step `st`
                self._record(st, step_values)
                step_values = {}
                continue
            loss = read[at_v]
            at_v += 1
            ok_norm = True
            if norm is not None:
                ok_norm, at_n = math.isfinite(read[at_n]), at_n + 1
            if not math.isfinite(loss) or not ok_norm:
                raise NonFiniteLossError(f"player {st.player.name}: non-finite loss ({loss}) or gradient norm at its "
                                         f"update {st.updates}; stopping (no checkpoint is written from it on). Lower "
                                         "the learning rate, keep grad_clip > 0, or check the data for NaNs.")
            step_values.setdefault(st.player.name, []).append(loss)

    def _record(self, step: int, values: dict[str, list[float]]) -> None:
        """A phase step's loss of each player: the mean over its updates in that step (a fake score updated five
        times logs the mean of its five losses)."""
        keep, new = SMOOTHING
        for st in self.states:
            if st.player.name not in values:
                continue
            value = sum(values[st.player.name]) / len(values[st.player.name])
            st.running = value if st.running is None else keep * st.running + new * value
            if step % HISTORY_EVERY == 0 or step == self.total:
                st.history.append((step, st.running))
            self.last[st.player.name] = value

    def snapshot(self, step: int, batches) -> dict:
        """Tensors and record fields of the phase after `step` (checked finite first)."""
        self.flush()
        tensors = {"rng.objective": self.generator.get_state(), "rng.torch": torch.get_rng_state()}
        players = {}
        for st in self.states:
            opt = st.optimizer.state_dict()
            name = st.player.name
            tensors |= {f"{PLAYER}.{name}.optim.{pid}.{k}": v.detach().cpu().contiguous()
                        for pid, entry in opt["state"].items() for k, v in entry.items() if torch.is_tensor(v)}
            players[name] = {"optimizer_param_groups": opt["param_groups"], "updates": st.updates,
                             "running": st.running, "history": [list(h) for h in st.history],
                             "ema_n_averaged": int(st.ema.n_averaged.item()) if st.ema is not None else None}
        state_dict = getattr(batches, "state_dict", None)
        return {"tensors": tensors, "record": {"step": step, "players": players, "evals": self.counter.state_dict(),
                                              "data_state": state_dict() if state_dict else None}}

    def modules(self) -> dict[str, nn.Module]:
        """Every player's weights (and EMA) by checkpoint name; the first player's as "model" and "ema"."""
        out = {}
        for i, st in enumerate(self.states):
            prefix = "" if i == 0 else f"{PLAYER}.{st.player.name}."
            out[prefix + "model"] = st.raw
            if st.ema is not None:
                out[prefix + "ema"] = st.ema.module
        return out


def restore_players(stem: Path, players: list[Player]) -> dict:
    """Load every player's weights and EMA from checkpoint `stem` into `players` and return the loop's resume dict."""
    record, tensors = read_record(stem), load_tensors(stem)
    if "players" not in record or "evals" not in record:
        raise CheckpointError(f"{checkpoint_paths(stem)[1]} is not a checkpoint of a players phase (no players block)")
    resume = {"step": int(record["step"]), "generator": tensors["rng.objective"], "torch_rng": tensors["rng.torch"],
              "evals": record["evals"], "players": {}, "data": record.get("data_state")}
    for i, player in enumerate(players):
        saved = record["players"].get(player.name)
        if saved is None:
            raise CheckpointError(f"{checkpoint_paths(stem)[1]} holds no player {player.name!r}")
        prefix = "" if i == 0 else f"{PLAYER}.{player.name}."
        _load(player.module, tensors, prefix + "model", stem)
        state: dict = {}
        head = f"{PLAYER}.{player.name}.optim."
        for key, value in tensors.items():
            if key.startswith(head):
                pid, name = key[len(head):].split(".", 1)
                state.setdefault(int(pid), {})[name] = value
        resume["players"][player.name] = {**saved, "optimizer": {"state": state,
                                                                 "param_groups": saved["optimizer_param_groups"]}}
    resume["tensors"] = tensors
    return resume


def _load(module: nn.Module, tensors: dict, name: str, stem: Path) -> None:
    sd = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
    try:
        module.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {checkpoint_paths(stem)[0]} does not fit player {name!r} "
                              f"({str(e).splitlines()[0]})") from None


def _load_emas(loop: PlayersLoop, tensors: dict, stem: Path) -> None:
    for i, st in enumerate(loop.states):
        if st.ema is not None:
            prefix = "" if i == 0 else f"{PLAYER}.{st.player.name}."
            _load(st.ema.module, tensors, prefix + "ema", stem)


def run_players_phase(phase: Phase, student: nn.Module, objective: PlayersObjective, run: Run, *,
                      resume_from: Path | None = None) -> PhaseResult:
    """Train the objective's players for phase.settings.total_steps steps (the student's updates) and write the
    student as the finished phase's checkpoint, with its budget (phase.final_record["budget"], the evaluations
    counted added: training/counting.py). `resume_from`: a mid-phase checkpoint of it, continued bit for bit."""
    phase.check_data(run.data)
    players = objective.players(student)
    resume = restore_players(resume_from, players) if resume_from is not None else None
    loop = PlayersLoop(players, run, phase.seed, phase.grad_accum, phase.settings.total_steps, resume)
    if resume is not None:
        _load_emas(loop, resume.pop("tensors"), resume_from)
    per_step = sum(p.updates for p in players) * phase.grad_accum
    done = loop.first - 1
    batches = phase.batches(run, done * per_step, resume.get("data") if resume else None)
    bar = tqdm(range(loop.first, loop.total + 1), desc=phase.desc, disable=not run.progress, leave=False,
               dynamic_ncols=True, initial=done, total=loop.total)
    try:
        for step in bar:
            loop.step(step, batches, objective)
            if step % 10 == 0 or step == loop.total:
                loop.flush()
                run.runlog.scalars(phase.name, step, {f"loss/{k}": v for k, v in loop.last.items()}
                                   | {f"lr/{st.player.name}": st.scheduler.get_last_lr()[0] for st in loop.states})
                bar.set_postfix({k: f"{v:.3g}" for k, v in loop.last.items()})
            _players_checkpoint(phase, run, loop, step, batches)
        loop.flush()
    except NonFiniteLossError as e:
        run.close()
        last = latest_loadable(phase.checkpoints, phase.prefix + "*") or phase.fallback
        raise NonFiniteLossError(f"{e} Nothing was saved after the last good checkpoint: "
                                 f"{f'{last}.safetensors' if last else 'none yet'}{phase.fallback_note}.") from None
    finally:
        bar.close()
        batches.close()
    first = loop.states[0]
    budget = phase.final_record.get("budget")
    if isinstance(budget, dict):
        budget.update(loop.counter.added_to(budget, {st.player.name: st.updates for st in loop.states},
                                            phase.batch_size * phase.grad_accum))
    result = PhaseResult(first.raw, first.ema, first.history)
    result.players = {st.player.name: st.raw for st in loop.states}
    _finish(phase, run, result)
    return result


def _players_checkpoint(phase: Phase, run: Run, loop: PlayersLoop, step: int, batches) -> None:
    if not (phase.checkpoint_every and step % phase.checkpoint_every == 0 and step < phase.settings.total_steps
            and run.accelerator.is_main_process):
        return
    snap = loop.snapshot(step, batches)
    weights = "ema" if loop.states[0].ema is not None else "model"
    record = {"kind": phase.partial_kind or f"{phase.kind}_partial", **phase.record, "sampling_weights": weights,
              **snap["record"]}
    _saving(phase, save_checkpoint)(phase.checkpoints / f"{phase.prefix}{step:08d}", loop.modules(), record,
                                    snap["tensors"])
    prune(phase.checkpoints, phase.prefix + "*", phase.keep)


def train_phase(phase: Phase, student: nn.Module, objective, run: Run, *, resume_from: Path | None = None
                ) -> PhaseResult:
    """A phase of one network (training/loop.py, unchanged) or, for an objective with players, of several."""
    runner = run_players_phase if hasattr(objective, "players") else run_phase
    return runner(phase, student, objective, run, resume_from=resume_from)
