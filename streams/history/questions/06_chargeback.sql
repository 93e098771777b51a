-- title: Monthly chargeback per tenant, from a price per tier per 1,000 prompt and output tokens
-- param: start DateTime64(3, 'UTC')        first hour billed (UTC)
-- param: end DateTime64(3, 'UTC')          first instant not billed
-- param: guaranteed_prompt_per_1k Float64  price of 1,000 prompt tokens on the guaranteed tier
-- param: guaranteed_output_per_1k Float64  price of 1,000 output tokens on the guaranteed tier
-- param: elastic_prompt_per_1k Float64     price of 1,000 prompt tokens on the elastic tier
-- param: elastic_output_per_1k Float64     price of 1,000 output tokens on the elastic tier
-- param: spot_prompt_per_1k Float64        price of 1,000 prompt tokens on the spot tier
-- param: spot_output_per_1k Float64        price of 1,000 output tokens on the spot tier
--
-- Billed: the tokens finished requests used (completed, preempted, cancelled, failed), in the month
-- they finished, at the price of the tier the request ran on. charge = the three tiers' charges.
SELECT
    month,
    tenant,
    prompt_tokens,
    output_tokens,
    guaranteed_charge,
    elastic_charge,
    spot_charge,
    guaranteed_charge + elastic_charge + spot_charge AS charge
FROM
(
    SELECT
        toStartOfMonth(r.hour) AS month,
        r.tenant AS tenant,
        sum(r.prompt_tokens) AS prompt_tokens,
        sum(r.output_tokens) AS output_tokens,
        sumIf(r.prompt_tokens, r.tier = 'guaranteed') / 1000 * {guaranteed_prompt_per_1k:Float64}
            + sumIf(r.output_tokens, r.tier = 'guaranteed') / 1000 * {guaranteed_output_per_1k:Float64} AS guaranteed_charge,
        sumIf(r.prompt_tokens, r.tier = 'elastic') / 1000 * {elastic_prompt_per_1k:Float64}
            + sumIf(r.output_tokens, r.tier = 'elastic') / 1000 * {elastic_output_per_1k:Float64} AS elastic_charge,
        sumIf(r.prompt_tokens, r.tier = 'spot') / 1000 * {spot_prompt_per_1k:Float64}
            + sumIf(r.output_tokens, r.tier = 'spot') / 1000 * {spot_output_per_1k:Float64} AS spot_charge
    FROM request_rollup_1h AS r
    WHERE r.hour >= {start:DateTime64(3, 'UTC')} AND r.hour < {end:DateTime64(3, 'UTC')}
      AND r.outcome IN ('completed', 'preempted', 'cancelled', 'failed')
    GROUP BY month, tenant
)
ORDER BY month, tenant
