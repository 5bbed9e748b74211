version 1.0

workflow cram_to_bam {
  meta {
    description: "Converts a CRAM file back to BAM using the reference it was compressed against, then indexes and validates the result."
  }

  input {
    File cram
    File? cram_index
    File reference_fasta
    File reference_fasta_index
    String output_basename
  }

  call convert {
    input:
      cram = cram,
      cram_index = cram_index,
      reference_fasta = reference_fasta,
      reference_fasta_index = reference_fasta_index,
      output_basename = output_basename
  }

  call validate {
    input:
      bam = convert.bam
  }

  output {
    File bam = convert.bam
    File bam_index = convert.bam_index
    File validation_report = validate.report
  }
}

task convert {
  input {
    File cram
    File? cram_index
    File reference_fasta
    File reference_fasta_index
    String output_basename
    Int threads = 4
  }

  Int disk_gb = ceil(3 * size(cram, "GiB") + size(reference_fasta, "GiB")) + 20

  command <<<
    set -euo pipefail
    ln -s "~{cram}" input.cram
    # a provided CRAI lets samtools seek instead of scanning the whole CRAM
    ~{if defined(cram_index) then "ln -s '" + cram_index + "' input.cram.crai" else "true"}
    samtools view --threads ~{threads} -b -T "~{reference_fasta}" \
      -o "~{output_basename}.bam" input.cram
    samtools index "~{output_basename}.bam"
  >>>

  output {
    File bam = "~{output_basename}.bam"
    File bam_index = "~{output_basename}.bam.bai"
  }

  runtime {
    docker: "quay.io/biocontainers/samtools:1.19.2--h50ea8bc_1"
    cpu: threads
    memory: "4 GiB"
    disks: "local-disk ~{disk_gb} HDD"
  }
}

task validate {
  input {
    File bam
  }

  command <<<
    set -euo pipefail
    samtools quickcheck -v "~{bam}" > validation.txt && echo "OK" >> validation.txt
  >>>

  output {
    File report = "validation.txt"
  }

  runtime {
    docker: "quay.io/biocontainers/samtools:1.19.2--h50ea8bc_1"
    cpu: 1
    memory: "1 GiB"
  }
}
