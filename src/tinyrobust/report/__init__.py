"""Reports: grids, the comparison rules, the Markdown/HTML output and the Pareto front. Reads run and
attack result files; imports nothing from train/ or attacks/ (the pipeline that runs them is reproduce/)."""
