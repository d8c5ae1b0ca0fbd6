package tbtest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// Device provisioning (WIRE §10.7). A CONNECT with user name or client id
// "provision" opens a provision-only session: it may subscribe to
// /provision/response and publish to /provision/request, nothing else.

const (
	topicProvisionRequest  = "/provision/request"
	topicProvisionResponse = "/provision/response"

	// provisionUser is the user name (or client id) of a provision session.
	provisionUser = "provision"
)

// DefaultProvisionCloseDelay is how long ThingsBoard keeps a provision
// connection open after answering its request before closing it.
const DefaultProvisionCloseDelay = 60 * time.Second

// Provision strategies of a device profile (provisionType in ThingsBoard).
const (
	// AllowCreateNewDevices creates the requested device, which must not
	// exist yet.
	AllowCreateNewDevices = "ALLOW_CREATE_NEW_DEVICES"
	// CheckPreProvisionedDevices only provisions devices that already exist
	// in the profile (ProvisionProfile.PreProvisioned) and answers with
	// their existing credentials.
	CheckPreProvisionedDevices = "CHECK_PRE_PROVISIONED_DEVICES"
)

// Credentials types of a provision request (credentialsType) and of its
// reply, as spelled on the wire, for comparing ProvisionedDevice.CredentialsType.
const (
	// CredentialsAccessToken is the default: the device authenticates with
	// an access token as MQTT user name.
	CredentialsAccessToken = "ACCESS_TOKEN"
	// CredentialsMQTTBasic is client id, user name and password; the reply
	// carries them as an object.
	CredentialsMQTTBasic = "MQTT_BASIC"
	// CredentialsX509 is a client certificate, given in the request's hash.
	CredentialsX509 = "X509_CERTIFICATE"
)

// ProvisionProfile is a device profile with provisioning enabled: the
// provisionDeviceKey/provisionDeviceSecret pair a provision request must
// carry, and the strategy applied to it.
type ProvisionProfile struct {
	// Name is the device profile name given to provisioned devices
	// ("default" if empty).
	Name   string
	Key    string
	Secret string
	// Strategy is AllowCreateNewDevices (the default when empty) or
	// CheckPreProvisionedDevices.
	Strategy string
	// PreProvisioned are devices that exist in the profile before any
	// request, for CheckPreProvisionedDevices.
	PreProvisioned []PreProvisionedDevice
}

// PreProvisionedDevice is a device created in the ThingsBoard UI before it
// asks to be provisioned. A successful request answers with AccessToken,
// whatever credentials the request asked for, as ThingsBoard returns the
// device's stored credentials.
type PreProvisionedDevice struct {
	Name        string
	AccessToken string
	// Gateway registers the device as a gateway that can connect with
	// AccessToken (as WithNamedGateway does).
	Gateway bool
}

// ProvisionedDevice records one successful provision request, so a test
// can check what a client asked for and what it was given.
type ProvisionedDevice struct {
	Name    string
	Profile string
	// CredentialsType is the type of the returned credentials.
	CredentialsType string
	// Token is the access token (ACCESS_TOKEN), Hash the certificate
	// (X509_CERTIFICATE); ClientID, Username and Password the MQTT_BASIC
	// credentials.
	Token, Hash                  string
	ClientID, Username, Password string
	// Gateway reports that the device was provisioned as a gateway; with
	// an access token it is registered and can connect as one.
	Gateway bool
	// PreProvisioned reports a CheckPreProvisionedDevices provisioning.
	PreProvisioned bool
	Time           time.Time
}

// WithProvisioning enables device provisioning for the given device
// profiles (WIRE §10.7). The option may be repeated; a key used by two
// profiles makes NewServer fail. Without it every provision request is
// answered NOT_FOUND.
func WithProvisioning(profiles ...ProvisionProfile) Option {
	return func(c *config) { c.provision = append(c.provision, profiles...) }
}

// WithProvisionCloseDelay sets how long a provision connection stays open
// after the server answered its request (DefaultProvisionCloseDelay, as
// on ThingsBoard), so that tests need not wait a minute. d <= 0 keeps the
// default.
func WithProvisionCloseDelay(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.provisionClose = d
		}
	}
}

// provisionProfile is a configured profile with its pre-provisioned devices.
type provisionProfile struct {
	ProvisionProfile
	pre map[string]PreProvisionedDevice
}

// setupProvisioning validates the profiles and registers pre-provisioned
// devices (called from newServer before the gateways are registered).
func (cfg *config) setupProvisioning() (map[string]*provisionProfile, error) {
	out := map[string]*provisionProfile{}
	for _, p := range cfg.provision {
		if p.Name == "" {
			p.Name = "default"
		}
		switch p.Strategy {
		case "":
			p.Strategy = AllowCreateNewDevices
		case AllowCreateNewDevices, CheckPreProvisionedDevices:
		default:
			return nil, fmt.Errorf("tbtest: unknown provision strategy %q", p.Strategy)
		}
		if _, dup := out[p.Key]; dup {
			return nil, fmt.Errorf("tbtest: two provision profiles with key %q", p.Key)
		}
		pp := &provisionProfile{ProvisionProfile: p, pre: map[string]PreProvisionedDevice{}}
		for _, d := range p.PreProvisioned {
			pp.pre[d.Name] = d
			if d.Gateway {
				cfg.gateways = append(cfg.gateways, gatewaySpec{name: d.Name, token: d.AccessToken, profile: p.Name})
			}
		}
		out[p.Key] = pp
	}
	if cfg.provisionClose <= 0 {
		cfg.provisionClose = DefaultProvisionCloseDelay
	}
	return out, nil
}

// isProvisionConnect reports a CONNECT that opens a provision session.
func isProvisionConnect(user, clientID string) bool {
	return user == provisionUser || clientID == provisionUser
}

// Provisioned returns the successful provision requests, oldest first.
func (s *Server) Provisioned() []ProvisionedDevice {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]ProvisionedDevice(nil), s.provisioned...)
}

// provisionSessionLocked registers a provision-only connection.
func (s *Server) provisionSessionLocked(cl *mqtt.Client) {
	s.connSeq++
	c := &conn{cl: cl, id: cl.ID, seq: s.connSeq, token: provisionUser, prov: true,
		v5: cl.Properties.ProtocolVersion == 5, subs: map[string]byte{}, gone: make(chan struct{})}
	s.conns[cl] = c
	s.info("tbtest: provision session", "conn", c.seq, "client", c.id)
	s.notifyLocked()
}

// onProvisionPublish handles a PUBLISH on a provision session: anything
// but /provision/request is answered PUBACK 0x90 and closed (DISCONNECT
// 0x90 on MQTT 5; a plain PUBACK and a TCP close on MQTT 3.1.1).
func (s *Server) onProvisionPublish(u *up) {
	if u.pk.TopicName != topicProvisionRequest {
		u.p.fail(codeTopicNameInvalid)
		u.p.closeWith(codeTopicNameInvalid)
		s.closeConnLocked(u, "provision session: topic not allowed")
		return
	}
	if !s.syntaxLocked(u) {
		return
	}
	o, err := parseObject(u.pk.Payload)
	if err != nil {
		s.adaptorErrorLocked(u, "provision request is not a JSON object")
		return
	}
	str := func(name string) string {
		if v, ok := o.get(name); ok && jsonKind(v) != 'n' {
			if x, err := asString(v); err == nil {
				return x
			}
		}
		return ""
	}
	gateway := false
	if v, ok := o.get("gateway"); ok && string(v) == "true" {
		gateway = true
	}
	req := provisionRequest{
		key: str("provisionDeviceKey"), secret: str("provisionDeviceSecret"),
		name: str("deviceName"), credType: str("credentialsType"),
		token: str("token"), clientID: str("clientId"), username: str("username"),
		password: str("password"), hash: str("hash"), gateway: gateway,
	}
	reply := s.provisionLocked(req, u.now)
	u.p.after = append(u.p.after, s.publishLocked(u.c, topicProvisionResponse, reply))
	u.p.provisioned = true
}

type provisionRequest struct {
	key, secret, name, credType               string
	token, clientID, username, password, hash string
	gateway                                   bool
}

var (
	provisionNotFound = []byte(`{"errorMsg":"Provision data was not found!","status":"NOT_FOUND"}`)
	provisionFailure  = []byte(`{"errorMsg":"Failed to provision device!","status":"FAILURE"}`)
)

// provisionLocked applies a request to the registry and returns the reply
// body, following DeviceProvisionServiceImpl: missing key/secret, unknown
// key or wrong secret → NOT_FOUND; an existing device (create) or a missing
// pre-provisioned device (check) → FAILURE.
func (s *Server) provisionLocked(r provisionRequest, now time.Time) []byte {
	p := s.provProfiles[r.key]
	if r.key == "" || r.secret == "" || p == nil || p.Secret != r.secret {
		return provisionNotFound
	}
	if p.Strategy == CheckPreProvisionedDevices {
		d, ok := p.pre[r.name]
		if !ok {
			return provisionFailure
		}
		s.provisioned = append(s.provisioned, ProvisionedDevice{Name: d.Name, Profile: p.Name,
			CredentialsType: CredentialsAccessToken, Token: d.AccessToken, Gateway: d.Gateway,
			PreProvisioned: true, Time: now})
		if _, exists := s.devices[d.Name]; !exists {
			s.devices[d.Name] = newDevice(d.Name, p.Name, now)
		}
		return credentialsReply(CredentialsAccessToken, jsonString(d.AccessToken))
	}
	if r.name == "" {
		r.name = randomString(20)
	}
	if _, exists := s.devices[r.name]; exists {
		return provisionFailure
	}
	rec := ProvisionedDevice{Name: r.name, Profile: p.Name, Gateway: r.gateway, Time: now}
	var value []byte
	switch r.credType {
	case "", CredentialsAccessToken:
		if r.token == "" {
			r.token = randomString(20)
		}
		if s.gateways[r.token] != nil || s.tokenTakenLocked(r.token) {
			return provisionFailure
		}
		rec.CredentialsType, rec.Token = CredentialsAccessToken, r.token
		value = jsonString(r.token)
	case CredentialsMQTTBasic:
		if r.username == "" && r.clientID == "" {
			return provisionFailure
		}
		rec.CredentialsType, rec.ClientID, rec.Username, rec.Password = CredentialsMQTTBasic, r.clientID, r.username, r.password
		var w objWriter
		w.raw("clientId", jsonString(r.clientID)).raw("userName", jsonString(r.username)).raw("password", jsonString(r.password))
		value = w.bytes()
	case CredentialsX509:
		if r.hash == "" {
			return provisionFailure
		}
		rec.CredentialsType, rec.Hash = CredentialsX509, r.hash
		value = jsonString(r.hash)
	default:
		return provisionFailure
	}
	d := newDevice(r.name, p.Name, now)
	s.devices[r.name] = d
	if r.gateway && rec.CredentialsType == CredentialsAccessToken {
		s.registerGatewayLocked(d, r.token, now)
	}
	s.provisioned = append(s.provisioned, rec)
	s.info("tbtest: device provisioned", "device", r.name, "profile", p.Name, "credentials", rec.CredentialsType, "gateway", r.gateway)
	return credentialsReply(rec.CredentialsType, value)
}

// tokenTakenLocked reports an access token already given to a provisioned
// device.
func (s *Server) tokenTakenLocked(token string) bool {
	for _, p := range s.provisioned {
		if p.CredentialsType == CredentialsAccessToken && p.Token == token {
			return true
		}
	}
	for _, p := range s.provProfiles {
		for _, d := range p.pre {
			if d.AccessToken == token {
				return true
			}
		}
	}
	return false
}

func credentialsReply(typ string, value []byte) []byte {
	var w objWriter
	w.raw("credentialsValue", value).raw("credentialsType", jsonString(typ)).raw("status", jsonString("SUCCESS"))
	return w.bytes()
}

// registerGatewayLocked makes d a gateway that authenticates with token.
func (s *Server) registerGatewayLocked(d *device, token string, now time.Time) {
	d.isGateway = true
	d.ownToken = token
	own, _ := newBucket(s.cfg.gwDeviceLimits, now)
	subs, _ := newBucket(s.cfg.gwLimits, now)
	s.gateways[token] = &gateway{token: token, dev: d, own: own, subs: subs}
}

// scheduleProvisionClose closes a provision connection once the close
// delay has passed after its answer (a plain TCP close, as ThingsBoard's
// scheduled ctx.close()).
func (s *Server) scheduleProvisionClose(c *conn) {
	t := time.NewTimer(s.cfg.provisionClose)
	go func() {
		defer t.Stop()
		select {
		case <-t.C:
		case <-c.gone:
			return
		case <-s.done:
			return
		}
		s.mu.Lock()
		s.dropConnLocked(c)
		s.notifyLocked()
		s.mu.Unlock()
		c.cl.Stop(errStopped)
	}()
}

// randomString returns n random lowercase hex characters.
func randomString(n int) string {
	b := make([]byte, (n+1)/2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:n]
}
