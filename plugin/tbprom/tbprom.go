// Package tbprom exports a tbgateway.Gateway's Stats as Prometheus metrics.
//
// It is a module of its own (github.com/thingsgate/tbgateway/plugin/tbprom),
// so the core module never depends on the Prometheus client.
//
// Register a Collector for a gateway:
//
//	g, err := tbgateway.Dial(ctx, broker, tbgateway.WithAccessToken(token))
//	...
//	prometheus.MustRegister(tbprom.NewCollector(g))
//	http.Handle("/metrics", promhttp.Handler())
//
// On each scrape the Collector takes one Gateway.Stats snapshot (cheap, it
// never blocks for long) and emits, under the namespace "tbgateway" (see
// WithNamespace and WithSubsystem):
//
//   - every uint64 counter of Stats as a counter named after its field in
//     snake_case with the suffix _total: tbgateway_accepted_total,
//     tbgateway_published_total, tbgateway_acknowledged_total,
//     tbgateway_data_points_total, tbgateway_resent_total,
//     tbgateway_restored_total, tbgateway_unrestorable_total,
//     tbgateway_refused_total, tbgateway_dropped_total,
//     tbgateway_expired_total, tbgateway_salvaged_total,
//     tbgateway_lost_on_disk_total, tbgateway_poisoned_total,
//     tbgateway_isolated_total, tbgateway_publish_errors_total,
//     tbgateway_received_total, tbgateway_malformed_total,
//     tbgateway_echoes_total, tbgateway_handler_dropped_total,
//     tbgateway_duplicate_rpcs_total, tbgateway_handler_panics_total,
//     tbgateway_reconnects_total, tbgateway_half_open_total,
//     tbgateway_announced_total, tbgateway_refreshed_total and
//     tbgateway_limits_applied_total (the counters start at zero at Dial);
//   - the gauges tbgateway_queue_depth_records (Stats.Queued),
//     tbgateway_queue_depth_bytes (Stats.QueuedBytes) and
//     tbgateway_in_flight_messages (Stats.InFlight);
//   - tbgateway_connection_state, one gauge per state with the label state
//     "up", "down" or "reconnecting": 1 for the current state, 0 for the
//     others (all three are 0 in a state outside these, such as before the
//     first connection). This shape, rather than one gauge valued by the
//     ConnectionState enum, lets a query or an alert say
//     tbgateway_connection_state{state="up"} == 0 without knowing the
//     enum's numbers, and sum over many gateways;
//   - tbgateway_ack_latency_seconds, a histogram of Stats.AckLatency (the
//     time from handing a message to the MQTT connection to its
//     acknowledgement), with the buckets of tbgateway.AckLatencyBounds() in
//     seconds. Its count is the sum of the bucket counts, so that the
//     buckets and the count of a scrape always agree.
//
// The names and help texts come from tbgateway.StatsMetrics, the table
// every exporter shares.
// There are no per-device labels: a gateway may serve thousands of devices,
// and the Stats counters are gateway-wide. To tell gateways apart (and to
// register more than one gateway's Collector in one registry) give each a
// constant label:
//
//	prometheus.MustRegister(tbprom.NewCollector(g,
//		tbprom.WithConstLabels(prometheus.Labels{"gateway": "line-3"})))
package tbprom

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/thingsgate/tbgateway"
)

// states are the values of connection_state's label state, in order.
var states = []struct {
	State tbgateway.ConnectionState
	Label string
}{
	{tbgateway.StateUp, "up"},
	{tbgateway.StateDown, "down"},
	{tbgateway.StateReconnecting, "reconnecting"},
}

// Option configures a Collector.
type Option func(*config)

type config struct {
	namespace, subsystem string
	labels               prometheus.Labels
}

// WithNamespace sets the metrics' namespace, the first part of their names
// (default "tbgateway"). An empty namespace leaves it out.
func WithNamespace(ns string) Option { return func(c *config) { c.namespace = ns } }

// WithSubsystem sets the metrics' subsystem, the part of their names after
// the namespace (default none).
func WithSubsystem(s string) Option { return func(c *config) { c.subsystem = s } }

// WithConstLabels adds labels with fixed values to every metric, such as
// the gateway's name. Several calls add up.
func WithConstLabels(l prometheus.Labels) Option {
	return func(c *config) {
		if c.labels == nil {
			c.labels = prometheus.Labels{}
		}
		for k, v := range l {
			c.labels[k] = v
		}
	}
}

// Collector is a prometheus.Collector of one gateway's Stats. Create it
// with NewCollector; it is safe for concurrent use.
type Collector struct {
	g       *tbgateway.Gateway
	metrics []tbgateway.StatsMetric
	descs   []*prometheus.Desc // per metrics
	state   *prometheus.Desc
	latency *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a Collector of g's Stats. Register it with
// prometheus.MustRegister (or a Registry's); its metrics are those the
// package documentation lists.
func NewCollector(g *tbgateway.Gateway, opts ...Option) *Collector {
	cfg := config{namespace: "tbgateway"}
	for _, o := range opts {
		o(&cfg)
	}
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(cfg.namespace, cfg.subsystem, name), help, labels, cfg.labels)
	}
	c := &Collector{g: g, metrics: tbgateway.StatsMetrics()}
	for _, m := range c.metrics {
		c.descs = append(c.descs, desc(metricName(m), m.Help))
	}
	c.state = desc("connection_state", "The connection's state: 1 for the current state, 0 for the others.", "state")
	c.latency = desc("ack_latency_seconds", "Time from handing a message to the MQTT connection to its acknowledgement.")
	return c
}

// Describe sends the descriptors of all the Collector's metrics.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
	ch <- c.state
	ch <- c.latency
}

// Collect takes one Stats snapshot and sends its metrics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.g.Stats()
	for i, m := range c.metrics {
		kind := prometheus.CounterValue
		if m.Gauge {
			kind = prometheus.GaugeValue
		}
		ch <- prometheus.MustNewConstMetric(c.descs[i], kind, float64(m.Value(&s)))
	}
	for _, st := range states {
		v := 0.0
		if s.State == st.State {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, v, st.Label)
	}
	count, sum, buckets := histogram(s.AckLatency)
	ch <- prometheus.MustNewConstHistogram(c.latency, count, sum, buckets)
}

// metricName is m's name without namespace: counters take the suffix
// _total.
func metricName(m tbgateway.StatsMetric) string {
	if m.Gauge {
		return m.Name
	}
	return m.Name + "_total"
}

// histogram converts h to a Prometheus histogram: the count (the sum of the
// per-bucket counts, including the one above every bound), the sum in
// seconds, and the cumulative counts keyed by upper bound in seconds.
func histogram(h tbgateway.Histogram) (count uint64, sum float64, buckets map[float64]uint64) {
	buckets = make(map[float64]uint64, len(h.Bounds))
	for i, b := range h.Bounds {
		if i < len(h.Counts) {
			count += h.Counts[i]
		}
		buckets[b.Seconds()] = count
	}
	for i := len(h.Bounds); i < len(h.Counts); i++ {
		count += h.Counts[i]
	}
	return count, h.Sum.Seconds(), buckets
}
