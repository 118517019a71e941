"""Analysis of the logged runs: search_runs -> pandas -> figures -> reports/answers.md.

    python -m analysis.report [--tracking-uri URI] [--experiment NAME] [--out reports]
    mlflow run . -e report --env-manager local [-P out=reports]

Modules, one job each: `query` (runs as typed DataFrames, curves, coverage), `data` (everything
the report needs, fetched once), `loaded` (logged Part 1 models back as classifiers),
`datasets` (which data copy each grid is answered from, smoke-size runs), `spread` (one row per
configuration over its seeds, `mean ± std (n=k)`, and when a difference is a finding),
`figures` (matplotlib PNGs), `text` (number formats, tables, trend sentences), `answers` (the
answers document: header and assembly; `answers_part1/2/3` hold the questions of each part,
`answers_common` their shared helpers), `report` (the CLI that ties them together; it never
trains).
"""
