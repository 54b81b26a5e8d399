"""llama-pilot tune: the fastest settings for a profile on this machine, measured inside the space
the estimator says is safe, and compared, paired, with llama.cpp's own --fit."""
