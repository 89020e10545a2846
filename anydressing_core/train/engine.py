"""The training loop on HF accelerate over torch.distributed (1..N processes, 1..N nodes): DDP, or
FSDP (``run.strategy=fsdp``: weights, gradients and AdamW state sharded, see :mod:`.fsdp`).

One optimizer step = ``grad_accum`` micro-batches of ``batch_size`` per process.  Randomness of a
step (timesteps, noise, latent sampling, CFG dropout) comes from one generator per process whose
state is checkpointed, and the data order from :class:`~..data.ResumableSampler`, so ``--resume``
continues exactly where the run stopped.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Dict, Optional

import torch
from torch.utils.data import DataLoader

from .. import losses as L
from ..conditioning import garment_cond
from ..data import DressingDataset, ResumableSampler, collate, read_dresscode, read_manifest, read_vitonhd
from ..errors import AnyDressingError
from . import state as ckpt
from .components import Components, load_components
from .config import TrainConfig
from .model import DressingTrainModel

log = logging.getLogger(__name__)


def build_records(cfg: TrainConfig):
    d = cfg.dataset
    if d.kind == "manifest":
        return read_manifest(d.path)
    if d.kind == "dresscode":
        return read_dresscode(d.path, d.split, d.categories, d.captions)
    return read_vitonhd(d.path, d.split, d.captions)


class Trainer:
    """Build once, then :meth:`run`.  ``components`` may be given (tests); else loaded from ``model.base``.

    ``resume``: ``latest``, ``auto`` or a checkpoint folder; ``resume_verified``: the folder was already checked
    by :func:`.integrity.resolve` (the command line does that before the process group exists).
    """

    def __init__(self, cfg: TrainConfig, components: Optional[Components] = None, resume: Optional[str] = None,
                 resume_verified: bool = False):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

        self.cfg = cfg
        run = cfg.run
        self.out = Path(run.output_dir)
        self.acc = Accelerator(
            cpu=not torch.cuda.is_available(),  # accelerate only forms a gloo group for CPU runs when told
            gradient_accumulation_steps=run.grad_accum, mixed_precision=run.mixed_precision,
            log_with="tensorboard", project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "logs")),
            # every trainable weight is in each step's graph (DressingTrainModel._touch_all)
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
        acc = self.acc
        if acc.distributed_type.value in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
            raise AnyDressingError(f"accelerate was configured for {acc.distributed_type.value} (accelerate config / "
                                   "--use_fsdp / --use_deepspeed); this trainer shards by itself: launch without "
                                   "those options and set run.strategy=fsdp")
        m = cfg.model
        records = build_records(cfg)
        needed = sorted({g.slot for r in records for g in r.garments} - set(m.slots))
        if needed:
            raise AnyDressingError(f"the dataset has garments of slot(s) {needed} but model.slots is {m.slots}; "
                                   f"add them (model.slots=[{', '.join(m.slots + needed)}]) so each gets a GFE LoRA set")
        torch.manual_seed(run.seed)  # same initial weights everywhere (DDP also broadcasts rank 0's)
        self.comp = components or load_components(cfg.model.base, cfg.model.tokenizer)
        model = DressingTrainModel.from_config(self.comp.unet, m)
        model.ctx.record_maps = cfg.loss.loc_weight > 0
        model.ctx.maps_max_tokens = cfg.loss.loc_max_tokens
        if m.gradient_checkpointing:
            model.garments.unet.enable_gradient_checkpointing()
            model.dressing_net.enable_gradient_checkpointing()
        wdtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(run.mixed_precision, torch.float32)
        model.to_device(acc.device, wdtype)  # frozen DressingNet in the compute dtype
        self.comp.to(acc.device, wdtype)
        self.wdtype = wdtype
        self.dists = None
        if cfg.loss.texture_weight > 0:
            self.dists = (L.DISTS(random_weights=True) if cfg.loss.dists_random_weights
                          else L.load_dists(cfg.loss.vgg16_path, cfg.loss.dists_alpha_beta or None)).to(acc.device)
        self.strategy = run.strategy
        # the optimizer's parameter order, by name: converts a DDP optimizer.pt for an FSDP run
        self.param_names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if self.strategy == "fsdp":
            from . import fsdp

            fsdp.shard(model, acc.device)  # before the optimizer: sharding replaces the parameters
        params = [p for p in model.parameters() if p.requires_grad]
        o = cfg.optim
        optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        warm = max(0, o.warmup_steps)
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)  # [paper] fixed lr after warmup
        if self.strategy == "fsdp":
            # not acc.prepare(model): on a multi-process run that would wrap the sharded module in DDP.
            # Accelerate still skips optimizer steps between accumulation boundaries; autocast is ours.
            self.optimizer = acc.prepare(optimizer)
            self.model = self.raw = model
            self.autocast = acc.autocast
        else:
            self.model, self.optimizer = acc.prepare(model, optimizer)  # DDP; prepare also adds autocast
            self.raw = acc.unwrap_model(self.model)
            self.autocast = contextlib.nullcontext

        self.dataset = DressingDataset(records, cfg.data, seed=run.seed)
        self.sampler = ResumableSampler(len(self.dataset), run.batch_size, acc.num_processes, acc.process_index,
                                        seed=run.seed)
        self.loader = DataLoader(self.dataset, batch_size=run.batch_size, sampler=self.sampler, collate_fn=collate,
                                 num_workers=run.num_workers, drop_last=True,
                                 persistent_workers=False)
        self.gen = torch.Generator().manual_seed(run.seed * 1000 + acc.process_index)
        self.step, self.epoch, self.batches_done = 0, 0, 0
        self._empty_text = None
        if resume:
            self._resume(resume, resume_verified)
        if acc.is_main_process:
            acc.init_trackers("anydressing", config=_flat(cfg.to_dict()))
        log.info("trainable parameters: %.2fM on %d process(es)", self.n_params / 1e6, acc.num_processes)

    # ---- one step -------------------------------------------------------------------------
    def _latents(self, images: torch.Tensor, sample: bool) -> torch.Tensor:
        return self.comp.codec.encode(images.to(self.acc.device, self.wdtype), sample=sample, generator=self.gen)

    def garment_added(self, count: int, size) -> Optional[Dict[str, torch.Tensor]]:
        """SDXL: GarmentsNet's added conditioning for ``count`` garments of ``size`` pixels, as the nodes give
        it (the empty prompt's pooled embedding, the garment canvas's size); None for SD1.5."""
        if self.comp.base != "sdxl":
            return None
        if self._empty_text is None:
            self._empty_text = self.comp.encode_text([""], self.acc.device)
        return garment_cond(self._empty_text.pooled, count, size)

    def losses(self, batch: Dict) -> Dict[str, torch.Tensor]:
        cfg, dev, gen = self.cfg, self.acc.device, self.gen
        person = batch["person"].to(dev)
        b, n = batch["present"].shape
        present = batch["present"].to(dev)
        keep = L.cfg_keep(b, cfg.loss.cfg_drop, gen, dev)
        captions = [c if k else "" for c, k in zip(batch["captions"], keep.tolist())]  # text dropped with garments
        text = self.comp.encode_text(captions, dev)
        added = self.comp.added_cond(text, person.shape[-2:])
        z0 = self._latents(person, sample=True)
        g = batch["garments"].flatten(0, 1)
        gz = self._latents(g, sample=False)  # garments: clean latents at t=0 [paper]
        garment_added = self.garment_added(g.shape[0], g.shape[-2:])
        sched = self.comp.scheduler
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=gen).to(dev)
        eps = torch.randn(z0.shape, generator=gen, dtype=torch.float32).to(dev, z0.dtype)
        zt = sched.add_noise(z0, eps, t)
        with self.autocast():
            eps_pred = self.model(zt, t, text.context, gz, batch["slots"].flatten().to(dev), present, keep,
                                  added, garment_added).float()
        out = {"ldm": L.ldm_loss(eps_pred, eps)}
        total = out["ldm"]
        maps = self.raw.ctx.maps
        if cfg.loss.loc_weight > 0 and maps and bool(keep.any()):
            out["loc"] = L.localization_loss(maps, batch["masks"].to(dev), present, z0.shape[-2:], rows=keep)
            total = total + cfg.loss.loc_weight * out["loc"]
        if self.dists is not None:
            sel = keep & (t <= cfg.loss.gtl_max_t)
            if bool(sel.any()):
                ab = sched.alphas_cumprod.to(dev)[t[sel]]
                x0 = L.predict_x0(zt[sel].float(), eps_pred[sel].float(), ab)
                img = self.comp.codec.decode(x0.to(self.wdtype)).float()
                masks, pres = batch["masks"].to(dev)[sel], present[sel]
                out["dists"] = L.dists_loss(self.dists, img, person[sel], masks, pres).mean()
                out["edge"] = L.edge_loss(img, person[sel], masks, batch["edges"].to(dev)[sel], pres).mean()
                # averaged over the batch rows that qualify [choice]; 0 on steps with none
                total = total + cfg.loss.texture_weight * (out["dists"] + out["edge"]) * sel.float().mean()
        out["total"] = total
        return out

    # ---- checkpoints ------------------------------------------------------------------------
    def _rng_state(self):
        return {"gen": self.gen.get_state(), "torch": torch.get_rng_state()}

    def save(self) -> Optional[Path]:
        acc = self.acc
        acc.wait_for_everyone()
        tmp = ckpt.begin(self.out, self.step, acc.is_main_process)
        acc.wait_for_everyone()
        ckpt.write_rank(tmp, acc.process_index, self._rng_state())
        state = {"step": self.step, "epoch": self.epoch, "batches_done": self.batches_done,
                 "world_size": acc.num_processes, "strategy": self.strategy, "config": self.cfg.to_dict()}
        final = None
        if self.strategy == "fsdp":
            from . import fsdp

            fsdp.save_sharded(tmp, self.model, self.optimizer.optimizer)  # every process writes its shard
            acc.wait_for_everyone()
            if acc.is_main_process:
                state["sharded_files"] = fsdp.shard_sizes(tmp)
                ckpt.write_sharded_main(tmp, self.lr_sched.state_dict(), state, self.cfg.run.checksums)
                final = ckpt.commit(tmp, self.cfg.run.keep_checkpoints)
                log.info("checkpoint %s", final)
        elif acc.is_main_process:
            acc.wait_for_everyone()
            ckpt.write_main(tmp, self.raw.state_dict(), self.optimizer.optimizer.state_dict(),
                            self.lr_sched.state_dict(), state, self.cfg.run.checksums)
            final = ckpt.commit(tmp, self.cfg.run.keep_checkpoints)
            log.info("checkpoint %s", final)
        else:
            acc.wait_for_everyone()
        acc.wait_for_everyone()
        return final

    def _resume(self, where: str, verified: bool = False) -> None:
        from . import integrity

        if verified:
            path = Path(where)
        else:
            path = integrity.resolve(self.out, where, self.acc.num_processes, self.cfg.run.checksums,
                                     warn=self.acc.is_main_process)
        if path is None:
            log.info("no checkpoint in %s; starting fresh", self.out)
            return
        data = ckpt.load(path, self.acc.process_index)
        st = data["state"]
        ckpt.check_compatible(path, st, self.acc.num_processes)
        written_by = ckpt.strategy_of(st)
        if written_by != self.strategy:  # same weights either way; only the reduction order changes
            log.warning("%s was written with run.strategy=%s, this run uses %s: converting (the continuation "
                        "is exact to float rounding, not bit for bit)", path, written_by, self.strategy)
        if written_by == "fsdp":
            from . import fsdp

            fsdp.load_sharded(path, self.raw, self.optimizer.optimizer)  # reshards, or gathers for DDP
        elif self.strategy == "fsdp":
            from . import fsdp

            fsdp.load_full(self.model, self.optimizer.optimizer, data["model"], data["optimizer"], self.param_names)
        else:
            missing, unexpected = self.raw.load_state_dict(data["model"], strict=False)
            if unexpected or [k for k in missing if not k.startswith("garments.unet.")]:
                raise AnyDressingError(f"{path} does not fit this model: missing {missing[:4]}, "
                                       f"unexpected {unexpected[:4]}")
            self.optimizer.optimizer.load_state_dict(data["optimizer"])
        self.lr_sched.load_state_dict(data["scheduler"])
        self.gen.set_state(data["rng"]["gen"])
        torch.set_rng_state(data["rng"]["torch"])
        self.step, self.epoch, self.batches_done = st["step"], st["epoch"], st["batches_done"]
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.batches_done)

    # ---- loop ---------------------------------------------------------------------------------
    def run(self) -> Dict[str, float]:
        from tqdm.auto import tqdm

        cfg, acc, run = self.cfg, self.acc, self.cfg.run
        bar = tqdm(total=run.max_steps, initial=self.step, disable=not (run.progress and acc.is_main_process),
                   desc="train", dynamic_ncols=True)
        self.model.train()
        t0, steps0, last = time.perf_counter(), self.step, {}
        while self.step < run.max_steps:
            self.sampler.start(self.epoch, self.batches_done)
            self.dataset.set_epoch(self.epoch)
            for batch in self.loader:
                with acc.accumulate(self.model):
                    parts = self.losses(batch)
                    acc.backward(parts["total"])
                    if acc.sync_gradients and cfg.optim.max_grad_norm > 0:
                        acc.clip_grad_norm_(self.model.parameters(), cfg.optim.max_grad_norm)
                    self.optimizer.step()
                    if acc.sync_gradients:
                        self.lr_sched.step()
                    self.optimizer.zero_grad(set_to_none=True)
                self.batches_done += 1
                if not acc.sync_gradients:
                    continue
                self.step += 1
                bar.update(1)
                last = {k: float(v.detach()) for k, v in parts.items()}
                if self.step % run.log_every == 0 or self.step == run.max_steps:
                    logs = {f"loss/{k}": v for k, v in last.items()}
                    logs["lr"] = self.lr_sched.get_last_lr()[0]
                    acc.log(logs, step=self.step)
                    bar.set_postfix(loss=f"{last['total']:.4f}")
                if run.checkpoint_every and self.step % run.checkpoint_every == 0:
                    self.save()
                # FSDP: every process runs the sampler (the weight gathers are collective), process 0 writes
                if run.sample_every and self.step % run.sample_every == 0 and (
                        acc.is_main_process or self.strategy == "fsdp"):
                    self.sample_grid()
                if self.step >= run.max_steps:
                    break
            else:
                self.epoch += 1
                self.batches_done = 0
        bar.close()
        elapsed = time.perf_counter() - t0
        speed = (self.step - steps0) / elapsed if elapsed > 0 else 0.0
        digests = self.weight_digests()
        if len(set(digests)) != 1:
            log.error("processes disagree on the weights after training: %s", digests)
        acc.wait_for_everyone()
        self.export(self.out / run.export_name)
        acc.end_training()
        return {"steps_per_s": speed, "step": self.step, "processes": acc.num_processes,
                "weights_agree": len(set(digests)) == 1, "weight_digest": digests[0], **last}

    def export(self, path: Path) -> None:
        """The nodes' format, written by process 0; with FSDP every process takes part in the gather."""
        from .export import export_model

        model = self.raw
        if self.strategy == "fsdp":
            from . import fsdp

            full = fsdp.full_state_dict(self.model)
            model = fsdp.export_twin(full, self.raw, self.cfg) if self.acc.is_main_process else None
        if self.acc.is_main_process:
            export_model(model, path, self.cfg, self.step, self.comp)
        self.acc.wait_for_everyone()

    def weight_digest(self) -> str:
        """SHA-1 of this process's trainable weights (bitwise); FSDP shards are gathered (collective)."""
        import hashlib

        from torch.distributed.tensor import DTensor

        h = hashlib.sha1()
        for name, p in self.raw.named_parameters():
            if p.requires_grad:
                w = p.detach().full_tensor() if isinstance(p, DTensor) else p.detach()
                h.update(name.encode())
                h.update(w.float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def weight_digests(self) -> list:
        """Every process's :meth:`weight_digest` (DDP must keep them identical)."""
        from accelerate.utils import gather_object

        return list(gather_object([self.weight_digest()]))

    def sample_grid(self):
        from .samples import sample_grid

        try:
            with self.autocast():  # DDP: the prepared module autocasts itself
                path = sample_grid(self, self.out / "samples" / f"step_{self.step:08d}.png",
                                   write=self.acc.is_main_process)
        except (RuntimeError, ValueError) as e:  # a failed preview must not stop training...
            if self.strategy == "fsdp":  # ...but a forward that stopped half-way leaves FSDP units gathered
                raise
            log.warning("sample grid at step %d failed: %s", self.step, e)
            return
        if self.strategy == "fsdp":
            from . import fsdp

            fsdp.reshard(self.model)
        if not self.acc.is_main_process:
            return
        tracker = self.acc.get_tracker("tensorboard", unwrap=True)
        if tracker is not None and path is not None:
            import cv2

            img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            tracker.add_image("samples", img, self.step, dataformats="HWC")


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float, str, bool)):
            out[f"{prefix}{k}"] = v
        else:
            out[f"{prefix}{k}"] = str(v)
    return out
