//! Helpers for collectors that read their values at scrape time.

use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Writes one gauge with a sample per label set. With a unit the exposed name gets its
/// suffix (`pool_size` with bytes is `pool_size_bytes`).
pub fn gauges<L, N>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (L, N)>,
) -> Result<(), std::fmt::Error>
where
    L: EncodeLabelSet,
    N: EncodeGaugeValue,
{
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::collector::Collector;
    use prometheus_client::registry::Registry;

    #[derive(Debug)]
    struct Pools;

    impl Collector for Pools {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            gauges(
                &mut encoder,
                "pool_size",
                "Size",
                Some(&Unit::Bytes),
                [(vec![("pool", "a")], 10u64), (vec![("pool", "b")], 20u64)],
            )
        }
    }

    #[test]
    fn one_sample_per_label_set_with_the_unit_suffix() {
        let mut r = Registry::with_prefix("x");
        r.register_collector(Box::new(Pools));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        let s = crate::scrape::parse(&text).unwrap();
        assert_eq!(s.value("x_pool_size_bytes", &[("pool", "a")]), Some(10.0));
        assert_eq!(s.value("x_pool_size_bytes", &[("pool", "b")]), Some(20.0));
    }
}
