rule bcftools_call:
    input:
        bam="results/dedup/{sample}.bam",
        reference=config["reference"],
    output:
        "results/calls/{sample}.vcf.gz",
    params:
        min_base_quality=config.get("min_base_quality", 20),
    log:
        "logs/bcftools_call/{sample}.log",
    conda:
        "../envs/calling.yaml"
    shell:
        "(bcftools mpileup -Ou -Q {params.min_base_quality} -f {input.reference} {input.bam}"
        " | bcftools call -mv -Oz -o {output}"
        " && bcftools index -t {output}) 2> {log}"


rule merge_and_normalise:
    input:
        vcfs=expand("results/calls/{sample}.vcf.gz", sample=SAMPLES),
        reference=config["reference"],
    output:
        "results/calls/all.norm.vcf.gz",
    log:
        "logs/merge_and_normalise.log",
    conda:
        "../envs/calling.yaml"
    shell:
        "(bcftools merge -Ou {input.vcfs}"
        " | bcftools norm -m -any -f {input.reference} -Oz -o {output}"
        " && bcftools index -t {output}) 2> {log}"
