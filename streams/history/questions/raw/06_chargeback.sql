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
-- The same answer from the raw events.
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
        toStartOfMonth(e.ts) AS month,
        e.tenant AS tenant,
        sum(toUInt64(e.prompt_tokens)) AS prompt_tokens,
        sum(toUInt64(e.output_tokens)) AS output_tokens,
        sumIf(toUInt64(e.prompt_tokens), e.tier = 'guaranteed') / 1000 * {guaranteed_prompt_per_1k:Float64}
            + sumIf(toUInt64(e.output_tokens), e.tier = 'guaranteed') / 1000 * {guaranteed_output_per_1k:Float64} AS guaranteed_charge,
        sumIf(toUInt64(e.prompt_tokens), e.tier = 'elastic') / 1000 * {elastic_prompt_per_1k:Float64}
            + sumIf(toUInt64(e.output_tokens), e.tier = 'elastic') / 1000 * {elastic_output_per_1k:Float64} AS elastic_charge,
        sumIf(toUInt64(e.prompt_tokens), e.tier = 'spot') / 1000 * {spot_prompt_per_1k:Float64}
            + sumIf(toUInt64(e.output_tokens), e.tier = 'spot') / 1000 * {spot_output_per_1k:Float64} AS spot_charge
    FROM request_events AS e
    WHERE e.ts >= {start:DateTime64(3, 'UTC')} AND e.ts < {end:DateTime64(3, 'UTC')}
      AND e.phase = 'finish'
    GROUP BY month, tenant
)
ORDER BY month, tenant
