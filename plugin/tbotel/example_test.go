package tbotel_test

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/plugin/tbotel"
	"github.com/thingsgate/tbgateway/tbtest"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// A gateway's Stats on an OpenTelemetry MeterProvider. A program passes
// its own provider (with a periodic reader and an OTLP exporter, say), or
// nil for the global one.
func ExampleRegister() {
	srv := tbtest.NewServer(nil) // a fake ThingsBoard, for the example
	defer srv.Close()
	ctx := context.Background()
	g, err := tbgateway.Dial(ctx, srv.URL(), tbgateway.WithAccessToken(tbtest.DefaultToken))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer g.Close(ctx)
	_ = g.Device("A").PublishTelemetry(ctx, tbgateway.Entry{Values: tbgateway.Values{"t": 1}})

	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(ctx)
	unregister, err := tbotel.Register(g, mp, tbotel.WithAttributes(attribute.String("gateway", "line-3")))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer unregister()

	var rm metricdata.ResourceMetrics
	_ = reader.Collect(ctx, &rm)
	var lines []string
	for _, m := range rm.ScopeMetrics[0].Metrics {
		switch m.Name {
		case "tbgateway.connection_state":
			for _, dp := range m.Data.(metricdata.Gauge[int64]).DataPoints {
				state, _ := dp.Attributes.Value("state")
				gw, _ := dp.Attributes.Value("gateway")
				lines = append(lines, fmt.Sprintf("%s{gateway=%s,state=%s} %d", m.Name, gw.Emit(), state.Emit(), dp.Value))
			}
		case "tbgateway.published":
			lines = append(lines, fmt.Sprintf("%s > 0: %v", m.Name, m.Data.(metricdata.Sum[int64]).DataPoints[0].Value > 0))
		}
	}
	sort.Strings(lines) // the SDK reports data points in no fixed order
	fmt.Println(strings.Join(lines, "\n"))
	// Output:
	// tbgateway.connection_state{gateway=line-3,state=down} 0
	// tbgateway.connection_state{gateway=line-3,state=reconnecting} 0
	// tbgateway.connection_state{gateway=line-3,state=up} 1
	// tbgateway.published > 0: true
}
