rule hard_filter:
    input:
        "results/calls/all.norm.vcf.gz",
    output:
        "results/calls/all.filtered.vcf.gz",
    params:
        expression=config.get("filter_expression", "QUAL<30 || INFO/DP<8"),
    log:
        "logs/hard_filter.log",
    conda:
        "../envs/calling.yaml"
    shell:
        "(bcftools filter -s LowQual -e '{params.expression}' -Oz -o {output} {input}"
        " && bcftools index -t {output}) 2> {log}"
