"""Generation engines for rollouts beyond Hugging Face generate (vLLM; engines apart)."""
