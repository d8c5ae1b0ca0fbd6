package tbprom_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/plugin/tbprom"
	"github.com/thingsgate/tbgateway/tbtest"
)

// A gateway's metrics on a /metrics endpoint. A program that uses the
// default registry writes prometheus.MustRegister(tbprom.NewCollector(g))
// and serves promhttp.Handler().
func Example() {
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

	reg := prometheus.NewRegistry()
	reg.MustRegister(tbprom.NewCollector(g, tbprom.WithConstLabels(prometheus.Labels{"gateway": "line-3"})))
	hs := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer hs.Close()

	resp, err := http.Get(hs.URL + "/metrics")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if line := sc.Text(); strings.Contains(line, "connection_state") || strings.HasPrefix(line, "# TYPE tbgateway_ack_latency") {
			fmt.Println(line)
		}
	}
	// Output:
	// # TYPE tbgateway_ack_latency_seconds histogram
	// # HELP tbgateway_connection_state The connection's state: 1 for the current state, 0 for the others.
	// # TYPE tbgateway_connection_state gauge
	// tbgateway_connection_state{gateway="line-3",state="down"} 0
	// tbgateway_connection_state{gateway="line-3",state="reconnecting"} 0
	// tbgateway_connection_state{gateway="line-3",state="up"} 1
}
