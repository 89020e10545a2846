"""Tiny diffusers UNet2DConditionModel configs shared by the weights tests: SD1.5-shaped and SDXL-shaped."""

SD_LIKE = dict(block_out_channels=(32, 64), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, norm_num_groups=8,
               attention_head_dim=4, sample_size=8)
XL_LIKE = dict(block_out_channels=(16, 32, 32), layers_per_block=2,
               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 3),
               cross_attention_dim=16, norm_num_groups=8, attention_head_dim=4, addition_embed_type="text_time",
               addition_time_embed_dim=4, projection_class_embeddings_input_dim=4 * 6 + 16, use_linear_projection=True)
