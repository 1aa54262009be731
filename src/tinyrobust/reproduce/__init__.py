"""`tinyrobust reproduce`: the pipeline that trains (train/), attacks (attacks/, export/) and reports
(report/) a grid of models. It sits above every other concern, so none of them imports it."""
