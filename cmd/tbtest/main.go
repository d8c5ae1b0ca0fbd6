// Command tbtest runs the fake ThingsBoard MQTT server of package tbtest on
// a chosen address, so that gateways written in any language, and
// mosquitto_pub users, can try the ThingsBoard gateway API against it
// without a ThingsBoard installation. It answers as the real server does
// (see WIRE.md in the project: what is stored, acknowledged, refused or
// closed) and prints every connection, publish with its answer and what it
// stored, downlink and refusal. On SIGINT or SIGTERM it prints a summary of
// the stored devices and exits.
//
//	go run ./cmd/tbtest -addr 127.0.0.1:1883 -token my-token
//	mosquitto_pub -h 127.0.0.1 -p 1883 -u my-token -q 1 \
//	    -t v1/gateway/telemetry -m '{"Device A":[{"ts":1700000000000,"values":{"temperature":23.5}}]}'
//
// Flags set the gateway tokens, a provisioning profile (-provision-key,
// -provision-secret), ThingsBoard's limits (maxPayloadSize, the
// tenant profile's rate limits and maxDevices) and the log detail; -h
// lists them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/thingsgate/tbgateway/tbtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, nil)
	switch {
	case errors.Is(err, flag.ErrHelp):
	case err != nil:
		fmt.Fprintln(os.Stderr, "tbtest:", err)
		os.Exit(2)
	}
}

// options are the command's flags.
type options struct {
	addr            string
	tokens          []string
	maxPayload      int
	maxDevices      int
	ackOnValidation bool
	own, gateway    tbtest.RateLimits
	verbose, quiet  bool
	provision       tbtest.ProvisionProfile // enabled by a key
}

func parseFlags(args []string, out io.Writer) (options, error) {
	o := options{}
	fs := flag.NewFlagSet("tbtest", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&o.addr, "addr", "127.0.0.1:1883", "listen address host:port (port 0 picks a free one)")
	tokens := fs.String("token", tbtest.DefaultToken, "gateway access tokens, comma-separated: the MQTT user name each gateway connects with (any password, any client id)")
	fs.IntVar(&o.maxPayload, "max-payload", tbtest.DefaultMaxPayloadSize, "maxPayloadSize: the largest MQTT remaining length accepted")
	fs.IntVar(&o.maxDevices, "max-devices", 0, "the tenant's maxDevices: sub-devices beyond it are not created (0: no limit)")
	fs.BoolVar(&o.ackOnValidation, "ack-on-validation", false, "the gateway profile's sendAckOnValidationException: acknowledge unparseable JSON instead of closing")
	fs.StringVar(&o.gateway.Messages, "limit-messages", "", "transportGatewayMsgRateLimit, shared by all sub-devices of a gateway, e.g. 100:600 (capacity:seconds[,…]; empty: unlimited)")
	fs.StringVar(&o.gateway.TelemetryMessages, "limit-telemetry", "", "transportGatewayTelemetryMsgRateLimit")
	fs.StringVar(&o.gateway.TelemetryDataPoints, "limit-points", "", "transportGatewayTelemetryDataPointsRateLimit")
	fs.StringVar(&o.own.Messages, "own-limit-messages", "", "transportGatewayDeviceMsgRateLimit: the gateway's own session (v1/devices/me/*)")
	fs.StringVar(&o.own.TelemetryMessages, "own-limit-telemetry", "", "transportGatewayDeviceTelemetryMsgRateLimit")
	fs.StringVar(&o.own.TelemetryDataPoints, "own-limit-points", "", "transportGatewayDeviceTelemetryDataPointsRateLimit")
	fs.StringVar(&o.provision.Key, "provision-key", "", "provisionDeviceKey of a device profile that provisions new devices (MQTT user name \"provision\", ALLOW_CREATE_NEW_DEVICES); empty: none")
	fs.StringVar(&o.provision.Secret, "provision-secret", "", "its provisionDeviceSecret")
	fs.BoolVar(&o.verbose, "v", false, "also print publish payloads")
	fs.BoolVar(&o.quiet, "q", false, "print only the banner and the summary")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for _, t := range strings.Split(*tokens, ",") {
		if t = strings.TrimSpace(t); t != "" {
			o.tokens = append(o.tokens, t)
		}
	}
	if len(o.tokens) == 0 {
		return o, errors.New("-token: at least one access token")
	}
	if (o.provision.Key == "") != (o.provision.Secret == "") {
		return o, errors.New("-provision-key and -provision-secret go together")
	}
	return o, nil
}

// run serves until ctx ends, logging to out. started, if not nil, receives
// the server once it listens (tests inspect it).
func run(ctx context.Context, args []string, out io.Writer, started chan<- *tbtest.Server) (err error) {
	o, err := parseFlags(args, out)
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	switch {
	case o.verbose:
		level = slog.LevelDebug
	case o.quiet:
		level = slog.LevelWarn
	}
	log := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: level}))
	opts := []tbtest.Option{
		tbtest.WithAddr(o.addr),
		tbtest.WithMaxPayloadSize(o.maxPayload),
		tbtest.WithMaxDevices(o.maxDevices),
		tbtest.WithRateLimits(o.own, o.gateway),
		tbtest.WithLogger(log),
	}
	for _, t := range o.tokens {
		opts = append(opts, tbtest.WithGateway(t))
	}
	if o.ackOnValidation {
		opts = append(opts, tbtest.WithSendAckOnValidationError())
	}
	if o.provision.Key != "" {
		opts = append(opts, tbtest.WithProvisioning(o.provision))
	}
	srv, err := newServer(opts)
	if err != nil {
		return err
	}
	defer srv.Close()
	banner(out, srv, o)
	if started != nil {
		started <- srv
	}
	<-ctx.Done()
	summary(out, srv)
	return nil
}

// newServer turns NewServer's panic on a start failure into an error.
func newServer(opts []tbtest.Option) (srv *tbtest.Server, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	return tbtest.NewServer(nil, opts...), nil
}

func banner(out io.Writer, srv *tbtest.Server, o options) {
	host, port, _ := net.SplitHostPort(srv.Addr())
	fmt.Fprintf(out, "tbtest: fake ThingsBoard MQTT gateway API on %s\n", srv.URL())
	for _, t := range o.tokens {
		fmt.Fprintf(out, "tbtest: gateway %q: user name %q (MQTT 3.1.1 or 5, any password, any client id)\n", srv.GatewayName(t), t)
	}
	fmt.Fprintf(out, "tbtest: try  mosquitto_pub -h %s -p %s -u %s -q 1 -t v1/gateway/telemetry -m '{\"Device A\":[{\"ts\":1700000000000,\"values\":{\"temperature\":23.5}}]}'\n",
		host, port, o.tokens[0])
}

// summary prints what is stored, device by device.
func summary(out io.Writer, srv *tbtest.Server) {
	fmt.Fprintln(out, "tbtest: stopped; stored:")
	for _, d := range srv.Devices() {
		keys := srv.TelemetryKeys(d.Name)
		attrs := srv.ClientAttributes(d.Name)
		names := make([]string, 0, len(attrs))
		for k := range attrs {
			names = append(names, k)
		}
		sort.Strings(names)
		kind := "device"
		if d.IsGateway {
			kind = "gateway"
		}
		fmt.Fprintf(out, "  %s %q profile %q: %d telemetry points %v, client attributes %v, %d claims\n",
			kind, d.Name, d.Profile, srv.TelemetryCount(d.Name), keys, names, len(srv.Claims(d.Name)))
	}
	if n := len(srv.Rejections()); n > 0 {
		fmt.Fprintf(out, "tbtest: %d refusals\n", n)
	}
}
