package wire

import (
	"encoding/json"
	"fmt"

	"github.com/docketq/docket/transport"
)

// workerRecord is how backends store a transport.WorkerInfo: JSON with
// times in Unix milliseconds.
type workerRecord struct {
	ID          string   `json:"id"`
	Host        string   `json:"host,omitempty"`
	PID         int      `json:"pid,omitempty"`
	Queues      []string `json:"queues,omitempty"`
	Concurrency int      `json:"conc,omitempty"`
	Busy        int      `json:"busy,omitempty"`
	Started     int64    `json:"started,omitempty"`
	Heartbeat   int64    `json:"hb,omitempty"`
	Expires     int64    `json:"exp,omitempty"`
	Version     string   `json:"ver,omitempty"`
}

// EncodeWorker encodes a worker's record for a backend's registry.
func EncodeWorker(w *transport.WorkerInfo) ([]byte, error) {
	return json.Marshal(workerRecord{ID: w.ID, Host: w.Host, PID: w.PID, Queues: w.Queues, Concurrency: w.Concurrency,
		Busy: w.Busy, Started: Millis(w.Started), Heartbeat: Millis(w.Heartbeat), Expires: Millis(w.Expires), Version: w.Version})
}

// DecodeWorker decodes a record written by EncodeWorker. An undecodable
// record wraps transport.ErrIncompatible.
func DecodeWorker(raw []byte) (transport.WorkerInfo, error) {
	var r workerRecord
	if err := json.Unmarshal(raw, &r); err != nil {
		return transport.WorkerInfo{}, fmt.Errorf("docket: decode worker record: %w: %v", transport.ErrIncompatible, err)
	}
	return transport.WorkerInfo{ID: r.ID, Host: r.Host, PID: r.PID, Queues: r.Queues, Concurrency: r.Concurrency, Busy: r.Busy,
		Started: FromMillis(r.Started), Heartbeat: FromMillis(r.Heartbeat), Expires: FromMillis(r.Expires), Version: r.Version}, nil
}
