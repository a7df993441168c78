// Every architecture with a tiny test model under testdata/tiny (made by
// scripts/gen_tiny_models.py): the one list the tests of plumb-model and
// plumb-cli share, each through `include!`.
[
    "llama",
    "qwen2",
    "qwen3",
    "gemma3",
    "gemma2",
    "llama3",
    "olmo2",
    "phi3",
    "phi3long",
    "mixtral",
    "qwen2moe",
    "qwen3moe",
    "qwen3yarn",
]
