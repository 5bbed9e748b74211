rule bwa_mem:
    input:
        reads=lambda wildcards: config["samples"][wildcards.sample],
        reference=config["reference"],
    output:
        temp("results/mapped/{sample}.bam"),
    params:
        read_group=r"@RG\tID:{sample}\tSM:{sample}\tPL:ILLUMINA",
    threads: 8
    log:
        "logs/bwa_mem/{sample}.log",
    conda:
        "../envs/mapping.yaml"
    shell:
        "(bwa mem -t {threads} -R '{params.read_group}' {input.reference} {input.reads}"
        " | samtools sort -@ {threads} -o {output} -) 2> {log}"


rule mark_duplicates:
    input:
        "results/mapped/{sample}.bam",
    output:
        bam="results/dedup/{sample}.bam",
        metrics="results/dedup/{sample}.metrics.txt",
    log:
        "logs/markdup/{sample}.log",
    conda:
        "../envs/mapping.yaml"
    shell:
        "(samtools markdup -s -f {output.metrics} {input} {output.bam}"
        " && samtools index {output.bam}) 2> {log}"
