"""A diffusers pipeline shipped inside exported folders of class-conditional models (imports only torch and
diffusers): deterministic DDIM over the scheduler's "trailing" timesteps, with class labels passed to the U-Net,
clipping x_hat and re-deriving eps from the clipped x_hat as the progdistill sampler does.

    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    images = pipe(class_labels=[0, 1, 2], num_inference_steps=4, output_type="np").images
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
                 return_dict: bool = True):
        num_classes = self.unet.config.get("num_class_embeds") or self.unet.config.get("unet_config", {}).get(
            "num_class_embeds")
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
            model_output = self.unet(image, t, class_labels=labels).sample
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
