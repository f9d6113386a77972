"""A diffusers pipeline shipped inside exported folders of class-conditional models (imports only torch and
diffusers): deterministic DDIM over the scheduler's "trailing" timesteps, with class labels passed to the U-Net,
clipping x_hat and re-deriving eps from the clipped x_hat as the progdistill sampler does.

    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    images = pipe(class_labels=[0, 1, 2], num_inference_steps=4, output_type="np").images

A guided student (guided distillation) takes the guidance strength as diffusers does, `guidance_scale` = 1 + w
(w the paper's weight; 1.0 is no guidance), within the range it was distilled for, at one network evaluation per
step: `pipe(class_labels=[0, 1, 2], guidance_scale=3.0, num_inference_steps=4)`.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor


class ProgdistillDDIMPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, class_labels=None, batch_size: int | None = None, generator=None,
                 num_inference_steps: int = 1, use_clipped_model_output: bool = True, output_type: str = "pil",
                 return_dict: bool = True, guidance_scale: float | None = None):
        config = self.unet.config
        num_classes = config.get("num_classes") or config.get("num_class_embeds") or config.get(
            "unet_config", {}).get("num_class_embeds")
        extra = {}
        if "w_min" in config:  # a guided student: w = guidance_scale - 1 is one of its inputs
            lo, hi = 1.0 + config["w_min"], 1.0 + config["w_max"]
            if guidance_scale is None:
                raise ValueError(f"this is a guided student: pass guidance_scale (1 + w), in [{lo:g}, {hi:g}]")
            if not lo <= guidance_scale <= hi:
                raise ValueError(f"guidance_scale {guidance_scale:g} is outside the range this student was "
                                 f"distilled for, [{lo:g}, {hi:g}] (w in [{config['w_min']:g}, {config['w_max']:g}])")
            extra["guidance"] = float(guidance_scale) - 1.0
        elif guidance_scale not in (None, 1.0):
            raise ValueError("this model was not distilled for guidance (it has no guidance input); "
                             "drop guidance_scale")
        if num_classes:
            if class_labels is None:
                raise ValueError(f"this model is class-conditional ({num_classes} classes): pass class_labels")
            labels = torch.as_tensor(class_labels, device=self._execution_device).long().reshape(-1)
            batch_size = len(labels)
        else:
            labels = None
            batch_size = batch_size or 1
        size = self.unet.config.sample_size
        shape = (batch_size, self.unet.config.in_channels, size, size)
        image = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_output = self.unet(image, t, class_labels=labels, **extra).sample
            image = self.scheduler.step(model_output, t, image, eta=0.0,
                                        use_clipped_model_output=use_clipped_model_output).prev_sample
        image = (image / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            out = image
        else:
            out = image.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                out = self.numpy_to_pil(out)
        return ImagePipelineOutput(images=out) if return_dict else (out,)
