from setuptools import find_packages, setup

setup(
    name="hyena-embed",
    version="0.1.0",
    description="Frozen HyenaDNA embeddings cached in Zarr, light heads trained on them, and fine-tuning",
    python_requires=">=3.10",
    packages=find_packages(include=["hyena_embed*", "cache*", "heads*"]),
    py_modules=["cli"],
    install_requires=[
        # torch is pinned by the set-up command (a CPU wheel here); any >=2.1 works
        "torch>=2.1",
        "transformers>=4.40",  # hyena_embed.hf_tokenizer: our tokens in users' transformers pipelines
        "datasets>=2.18",
        "zarr>=3.0",
        "numpy>=1.24",
        "scikit-learn>=1.3",
        "lightgbm>=4.0",
        "click>=8.1",
        "safetensors>=0.4",
        "huggingface_hub>=0.23",
        "tqdm>=4.66",
        "pandas>=2.0",
        "pyarrow>=14",
        "matplotlib>=3.7",
        "pyfaidx>=0.8",
        "skops>=0.10",  # scikit-learn heads saved without pickle
    ],
    # triton: the fused CUDA kernels' tests run on CPU under its interpreter (CUDA builds of
    # torch bring it anyway)
    extras_require={"dev": ["pytest>=7", "xarray>=2024.1", "triton>=3.0; platform_system == 'Linux'"]},
    entry_points={"console_scripts": ["hyena-embed=cli:main"]},
)
