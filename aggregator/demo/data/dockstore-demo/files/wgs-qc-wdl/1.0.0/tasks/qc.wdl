version 1.0

task flagstat {
  input {
    File bam
    String sample_id
    Int threads = 2
  }

  command <<<
    set -euo pipefail
    samtools flagstat --threads ~{threads} --output-fmt json "~{bam}" > "~{sample_id}.flagstat.json"
  >>>

  output {
    File report = "~{sample_id}.flagstat.json"
  }

  runtime {
    docker: "quay.io/biocontainers/samtools:1.19.2--h50ea8bc_1"
    cpu: threads
    memory: "2 GiB"
  }
}

task coverage {
  input {
    File bam
    File bam_index
    String sample_id
    Int min_mapping_quality = 20
    Int threads = 4
  }

  command <<<
    set -euo pipefail
    ln -s "~{bam}" input.bam
    ln -s "~{bam_index}" input.bam.bai
    mosdepth --threads ~{threads} --no-per-base --mapq ~{min_mapping_quality} \
      "~{sample_id}" input.bam
  >>>

  output {
    File summary = "~{sample_id}.mosdepth.summary.txt"
  }

  runtime {
    docker: "quay.io/biocontainers/mosdepth:0.3.8--hd299d5a_0"
    cpu: threads
    memory: "4 GiB"
  }
}

task summarise {
  input {
    File flagstat_json
    File coverage_summary
    String sample_id
  }

  command <<<
    set -euo pipefail
    python3 - <<'PY'
    import json
    flagstat = json.load(open("~{flagstat_json}"))["QC-passed reads"]
    mean_depth = "NA"
    for line in open("~{coverage_summary}"):
        fields = line.split("\t")
        if fields[0] == "total":
            mean_depth = fields[3].strip()
    with open("~{sample_id}.qc.tsv", "w") as out:
        out.write("sample\ttotal_reads\tmapped_pct\tmean_depth\n")
        out.write("~{sample_id}\t%d\t%s\t%s\n" % (
            flagstat["total"], flagstat["mapped %"], mean_depth))
    PY
  >>>

  output {
    File summary = "~{sample_id}.qc.tsv"
  }

  runtime {
    docker: "python:3.12-slim"
    cpu: 1
    memory: "1 GiB"
  }
}
