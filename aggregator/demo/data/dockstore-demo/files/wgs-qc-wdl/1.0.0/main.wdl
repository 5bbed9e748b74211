version 1.0

import "tasks/qc.wdl" as qc

workflow wgs_qc {
  meta {
    description: "Post-alignment quality control for one whole-genome BAM: alignment statistics, depth of coverage and a one-line summary."
    author: "Demo Lab"
  }

  parameter_meta {
    bam: "Coordinate-sorted BAM file."
    bam_index: "BAI index of the BAM file."
    sample_id: "Sample name used to prefix every output."
    min_mapping_quality: "Reads below this mapping quality are ignored for coverage."
  }

  input {
    File bam
    File bam_index
    String sample_id
    Int min_mapping_quality = 20
  }

  call qc.flagstat {
    input:
      bam = bam,
      sample_id = sample_id
  }

  call qc.coverage {
    input:
      bam = bam,
      bam_index = bam_index,
      sample_id = sample_id,
      min_mapping_quality = min_mapping_quality
  }

  call qc.summarise {
    input:
      flagstat_json = flagstat.report,
      coverage_summary = coverage.summary,
      sample_id = sample_id
  }

  output {
    File flagstat_report = flagstat.report
    File coverage_summary = coverage.summary
    File qc_summary = summarise.summary
  }
}
