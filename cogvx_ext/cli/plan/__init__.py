"""``cogvx-ext plan``: the bucket plan of a dataset, from clip headers only, before a long run.

It is made by the code training uses: the chosen plugins' ``cogvx_clip_targets`` decide every clip
(through ``cogvx_ext.data.planning.plan_samples``) and their ``cogvx_batch_sampler`` builds the batches;
nothing here decides anything again. The table's rows are what the sampler says of itself
(``describe(samples, model)``: the sampler report protocol of ``cogvx_ext.data.sampling``, which
every ``EpochBatchSampler`` answers); without a sampler (one shape, the script's DataLoader) the
script's arithmetic is shown. With a schedule (``cogvx_stages``) the report starts with it: each
stage's steps, tokens, and estimated share of the run's compute.
"""
