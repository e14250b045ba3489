"""Steps 2 and 5-8 and the pipeline behind them: batching, settings and their traced inputs, penalties, the
sampler, the compiled loop, speculation, scoring, the jitted programs and `Generator`.

Imports: `errors`, `util`, `text`, `model`, `parallel`.
"""
