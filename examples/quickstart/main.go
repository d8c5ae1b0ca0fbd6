// Command quickstart is a small gateway that bridges simulated sensors into
// ThingsBoard.
//
// With no flags it starts an embedded fake ThingsBoard (tbtest), so it runs
// anywhere: the gateway announces its sensors with a device profile,
// streams telemetry and attributes, answers an RPC and a shared-attribute
// change that the server sends, requests attributes, and prints what
// happened on both sides. With -broker and -token it runs the same gateway
// against a real ThingsBoard. With -provision-key and -provision-secret it
// first provisions itself as a gateway device (named -name) in the device
// profile those belong to, and runs with the credentials it was given (the
// embedded server then has such a profile).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"math"
	"math/rand/v2"
	"os"
	"os/signal"
	"sync"
	"time"

	"github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/tbtest"
)

func main() {
	broker := flag.String("broker", "", "ThingsBoard MQTT URL, e.g. tcp://localhost:1883 (default: an embedded fake server)")
	token := flag.String("token", "quickstart-token", "the gateway device's access token")
	duration := flag.Duration("duration", 3*time.Second, "how long to stream before exiting")
	devices := flag.Int("devices", 3, "number of simulated sensors")
	interval := flag.Duration("interval", 250*time.Millisecond, "telemetry period")
	var p provisioning
	flag.StringVar(&p.key, "provision-key", "", "provision the gateway first with this device profile's provision key")
	flag.StringVar(&p.secret, "provision-secret", "", "... and its provision secret")
	flag.StringVar(&p.name, "name", "quickstart-gateway", "the gateway device's name when provisioning")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *broker, *token, p, *duration, *interval, *devices); err != nil {
		log.Fatal(err)
	}
}

// provisioning is what the gateway provisions itself with, if key is set.
type provisioning struct{ key, secret, name string }

func run(ctx context.Context, broker, token string, p provisioning, duration, interval time.Duration, n int) error {
	var srv *tbtest.Server
	if broker == "" {
		opts := []tbtest.Option{tbtest.WithGateway(token)}
		if p.key != "" {
			opts = append(opts, tbtest.WithProvisioning(tbtest.ProvisionProfile{Name: "gateways", Key: p.key, Secret: p.secret}))
		}
		srv = tbtest.NewServer(nil, opts...)
		defer srv.Close()
		broker = srv.URL()
		say("server", "embedded ThingsBoard listening on %s", broker)
	}

	auth := []tbgateway.Option{tbgateway.WithAccessToken(token)}
	if p.key != "" {
		creds, err := tbgateway.Provision(ctx, broker, tbgateway.ProvisionRequest{
			Key: p.key, Secret: p.secret, DeviceName: p.name, Gateway: true})
		if err != nil {
			return fmt.Errorf("provision: %w", err)
		}
		say("gateway", "provisioned %q as a gateway (%s)", p.name, creds.Type)
		auth = creds.Options()
	}
	gw, err := tbgateway.Dial(ctx, broker, auth...)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer gw.Close(context.Background())
	say("gateway", "connected to %s", broker)

	sim := newSimulator(n)
	gw.OnAttributeUpdate(tbgateway.AttributeHandlerFunc(func(_ context.Context, u tbgateway.AttributeUpdate) {
		say("gateway", "shared attributes of %q changed: %v (deleted %v)", u.Device, u.Values, u.Deleted)
		if t, ok := u.Values["targetTemperature"].(float64); ok {
			sim.setTarget(u.Device, t)
		}
	}))
	rpcs := tbgateway.NewRPCMux()
	rpcs.HandleFunc("getState", func(_ context.Context, r *tbgateway.RPCRequest) (any, error) {
		say("gateway", "RPC %d %s for %q", r.ID, r.Method, r.Device)
		return sim.state(r.Device), nil
	})
	rpcs.HandleFunc("", func(_ context.Context, r *tbgateway.RPCRequest) (any, error) {
		return nil, fmt.Errorf("unknown method %q", r.Method)
	})
	gw.OnRPC(rpcs)

	var devs []*tbgateway.Device
	for _, name := range sim.names {
		d, err := gw.Connect(ctx, name, tbgateway.WithDeviceProfile("simulated-sensor"))
		if err != nil {
			return fmt.Errorf("connect %s: %w", name, err)
		}
		devs = append(devs, d)
		if err := d.PublishAttributes(ctx, tbgateway.Values{"firmware": "1.0.3", "model": "SIM-100"}); err != nil {
			return err
		}
	}
	say("gateway", "announced %d sensors with profile %q", len(devs), "simulated-sensor")

	// The embedded server plays the ThingsBoard user halfway through.
	var wg sync.WaitGroup
	if srv != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			serverSide(ctx, srv, sim.names[0], duration/2)
		}()
	}

	sent := 0
	tick := time.NewTicker(interval)
	defer tick.Stop()
	deadline := time.After(duration)
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-deadline:
			break loop
		case now := <-tick.C:
			batch := tbgateway.Telemetry{}
			for _, name := range sim.names {
				batch[name] = []tbgateway.Entry{tbgateway.At(now, sim.read(name))}
			}
			if err := gw.PublishTelemetry(ctx, batch); err != nil && !errors.Is(err, context.Canceled) {
				say("gateway", "telemetry not sent: %v", err)
				continue
			}
			sent += len(batch)
		}
	}
	wg.Wait()
	v, err := devs[0].RequestAttributes(ctx, tbgateway.AttributeKeys{
		Client: []string{"firmware"}, Shared: []string{"targetTemperature"},
	})
	if err != nil {
		say("gateway", "attribute request failed: %v", err)
	} else {
		say("gateway", "attributes of %q: client %v, shared %v", devs[0].Name(), v.Client, v.Shared)
	}
	if err := gw.Self().PublishTelemetry(ctx, tbgateway.Entry{Values: tbgateway.Values{"entriesSent": sent}}); err != nil {
		say("gateway", "own telemetry not sent: %v", err)
	}
	st := gw.Stats()
	say("gateway", "sent %d telemetry entries in %d messages, %d acknowledged, %d received",
		sent, st.Published, st.Acknowledged, st.Received)

	if srv != nil {
		for _, d := range srv.Devices() {
			p, ok := srv.Latest(d.Name, "temperature")
			if !ok {
				say("server", "device %q (the gateway): %d points stored", d.Name, srv.TelemetryCount(d.Name))
				continue
			}
			say("server", "device %q profile %q: %d points stored, latest temperature %v",
				d.Name, d.Profile, srv.TelemetryCount(d.Name), p.Value)
		}
	}
	return nil
}

func serverSide(ctx context.Context, srv *tbtest.Server, device string, after time.Duration) {
	select {
	case <-time.After(after):
	case <-ctx.Done():
		return
	}
	say("server", "setting shared attribute targetTemperature=24.5 on %q", device)
	srv.SetSharedAttributes(device, map[string]any{"targetTemperature": 24.5})
	time.Sleep(100 * time.Millisecond) // let the gateway apply it before asking
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	reply, err := srv.RPC(rctx, device, "getState", map[string]any{})
	if err != nil {
		say("server", "RPC getState failed: %v", err)
		return
	}
	say("server", "RPC getState answered: %s", reply)
}

func say(side, format string, a ...any) {
	fmt.Printf("[%-7s] %s\n", side, fmt.Sprintf(format, a...))
}

// simulator produces plausible sensor readings that drift towards a target.
type simulator struct {
	mu     sync.Mutex
	names  []string
	temp   map[string]float64
	target map[string]float64
}

func newSimulator(n int) *simulator {
	s := &simulator{temp: map[string]float64{}, target: map[string]float64{}}
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("Sensor %d", i)
		s.names = append(s.names, name)
		s.temp[name] = 20 + float64(i)
		s.target[name] = 21
	}
	return s
}

func (s *simulator) read(name string) tbgateway.Values {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.temp[name] + (s.target[name]-s.temp[name])*0.2 + rand.Float64()*0.2 - 0.1
	s.temp[name] = t
	return tbgateway.Values{
		"temperature": math.Round(t*100) / 100,
		"humidity":    40 + rand.IntN(20),
	}
}

func (s *simulator) setTarget(name string, t float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.target[name] = t
}

func (s *simulator) state(name string) map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return map[string]any{"temperature": math.Round(s.temp[name]*100) / 100, "target": s.target[name]}
}
