//! An Electrum-protocol server at the edge (there is no bitcoind here), over a small chain
//! of its own: it serves the transactions it holds; accepts broadcasts whose inputs exist
//! and are unspent (a double spend is refused, as bitcoind refuses it); answers
//! `listunspent`, `get_history` and `headers.subscribe` from them; and mines its mempool
//! into a block when the test says so. Scripts are not checked here: the tests check final
//! transactions with Bitcoin Core's interpreter themselves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bitcoin::hashes::{sha256, Hash as _};
use bitcoin::{OutPoint, Script, Transaction, Txid};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The height of the block the initial transactions are in.
pub const START_HEIGHT: u32 = 100;

#[derive(Default)]
struct Chain {
    txs: HashMap<Txid, Transaction>,
    /// Block height of each confirmed transaction; the others are in the mempool.
    height: HashMap<Txid, u32>,
    tip: u32,
    /// Every broadcast call, accepted or not.
    broadcasts: Vec<Transaction>,
    /// Connections accepted.
    connections: usize,
    /// Calls about transactions or scripts (everything but the tip and the version).
    lookups: usize,
}

impl Chain {
    fn spender(&self, outpoint: &OutPoint) -> Option<Txid> {
        self.txs
            .values()
            .find(|t| t.input.iter().any(|i| i.previous_output == *outpoint))
            .map(Transaction::compute_txid)
    }

    fn pays(&self, tx: &Transaction, hash: &str) -> bool {
        tx.output
            .iter()
            .any(|o| scripthash(&o.script_pubkey) == hash)
    }

    fn spends(&self, tx: &Transaction, hash: &str) -> bool {
        tx.input.iter().any(|i| {
            self.txs
                .get(&i.previous_output.txid)
                .and_then(|p| p.output.get(i.previous_output.vout as usize))
                .is_some_and(|o| scripthash(&o.script_pubkey) == hash)
        })
    }

    fn height_json(&self, txid: &Txid) -> u32 {
        self.height.get(txid).copied().unwrap_or(0)
    }

    fn add(&mut self, tx: Transaction) -> Result<Txid, String> {
        let txid = tx.compute_txid();
        for input in &tx.input {
            let prev = &input.previous_output;
            let exists = self
                .txs
                .get(&prev.txid)
                .is_some_and(|p| p.output.len() > prev.vout as usize);
            if !exists {
                return Err(format!("bad-txns-inputs-missingorspent ({prev} unknown)"));
            }
            if let Some(other) = self.spender(prev).filter(|o| *o != txid) {
                return Err(format!("txn-mempool-conflict ({prev} spent by {other})"));
            }
        }
        self.txs.insert(txid, tx);
        Ok(txid)
    }

    fn call(&mut self, method: &str, p: &Value) -> Result<Value, String> {
        let hash = p[0].as_str().unwrap_or("").to_owned();
        if !matches!(method, "server.version" | "blockchain.headers.subscribe") {
            self.lookups += 1;
        }
        Ok(match method {
            "server.version" => json!(["chain-double", "1.4"]),
            "blockchain.headers.subscribe" => {
                json!({"height": self.tip, "hex": "00".repeat(80)})
            }
            "blockchain.transaction.get" => {
                let txid: Txid = hash.parse().map_err(|e| format!("{e}"))?;
                match self.txs.get(&txid) {
                    Some(t) => json!(bitcoin::consensus::encode::serialize_hex(t)),
                    None => return Err(format!("No such mempool or blockchain transaction {txid}")),
                }
            }
            "blockchain.transaction.broadcast" => {
                let tx: Transaction =
                    bitcoin::consensus::encode::deserialize_hex(&hash).map_err(|e| e.to_string())?;
                self.broadcasts.push(tx.clone());
                json!(self.add(tx)?.to_string())
            }
            "blockchain.scripthash.listunspent" => {
                let mut out = Vec::new();
                for (txid, tx) in &self.txs {
                    for (vout, o) in tx.output.iter().enumerate() {
                        let outpoint = OutPoint::new(*txid, vout as u32);
                        if scripthash(&o.script_pubkey) == hash && self.spender(&outpoint).is_none()
                        {
                            out.push(json!({
                                "tx_hash": txid.to_string(),
                                "tx_pos": vout,
                                "height": self.height_json(txid),
                                "value": o.value.to_sat(),
                            }));
                        }
                    }
                }
                json!(out)
            }
            "blockchain.scripthash.get_history" => json!(self
                .txs
                .iter()
                .filter(|(_, t)| self.pays(t, &hash) || self.spends(t, &hash))
                .map(|(txid, _)| json!({"tx_hash": txid.to_string(), "height": self.height_json(txid)}))
                .collect::<Vec<_>>()),
            other => return Err(format!("unknown method {other}")),
        })
    }
}

/// Electrum's script hash: sha256 of the script, bytes reversed, hex.
pub fn scripthash(script: &Script) -> String {
    let mut h = sha256::Hash::hash(script.as_bytes()).to_byte_array();
    h.reverse();
    hex::encode(h)
}

/// The server; it runs until the test ends.
#[derive(Clone)]
pub struct ChainServer {
    /// `tcp://127.0.0.1:port`.
    pub url: String,
    chain: Arc<Mutex<Chain>>,
}

impl ChainServer {
    /// A chain whose tip is block [`START_HEIGHT`], holding `confirmed` in it.
    pub async fn start(confirmed: Vec<Transaction>) -> ChainServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("tcp://{}", listener.local_addr().expect("addr"));
        let mut chain = Chain {
            tip: START_HEIGHT,
            ..Chain::default()
        };
        for tx in confirmed {
            chain.height.insert(tx.compute_txid(), START_HEIGHT);
            chain.txs.insert(tx.compute_txid(), tx);
        }
        let chain = Arc::new(Mutex::new(chain));
        let shared = chain.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let chain = shared.clone();
                chain.lock().expect("lock").connections += 1;
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let req: Value = serde_json::from_str(&line).expect("json request");
                        let method = req["method"].as_str().unwrap_or("");
                        let result = chain.lock().expect("lock").call(method, &req["params"]);
                        let resp = match result {
                            Ok(r) => json!({"jsonrpc": "2.0", "id": req["id"], "result": r}),
                            Err(m) => json!({"jsonrpc": "2.0", "id": req["id"],
                                "error": {"code": 1, "message": m}}),
                        };
                        if w.write_all(format!("{resp}\n").as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        ChainServer { url, chain }
    }

    /// Puts `txs` in the tip block (funding made after the server started).
    pub fn confirm(&self, txs: Vec<Transaction>) {
        let mut c = self.chain.lock().expect("lock");
        for tx in txs {
            c.height.insert(tx.compute_txid(), START_HEIGHT);
            c.txs.insert(tx.compute_txid(), tx);
        }
    }

    /// Every broadcast the server was sent.
    pub fn broadcasts(&self) -> Vec<Transaction> {
        self.chain.lock().expect("lock").broadcasts.clone()
    }

    /// Someone else's transaction enters the mempool (refused if it double-spends).
    pub fn relay(&self, tx: Transaction) -> Result<Txid, String> {
        self.chain.lock().expect("lock").add(tx)
    }

    /// Mines the mempool into the next block, then `more` empty blocks.
    pub fn mine(&self, more: u32) {
        let mut c = self.chain.lock().expect("lock");
        c.tip += 1;
        let tip = c.tip;
        let pending: Vec<Txid> = c
            .txs
            .keys()
            .filter(|t| !c.height.contains_key(*t))
            .copied()
            .collect();
        for t in pending {
            c.height.insert(t, tip);
        }
        c.tip += more;
    }

    /// How many connections clients opened.
    pub fn connections(&self) -> usize {
        self.chain.lock().expect("lock").connections
    }

    /// How many calls asked about a transaction or a script (the bridge asks for the tip
    /// on its own every round, to know the server is there).
    pub fn lookups(&self) -> usize {
        self.chain.lock().expect("lock").lookups
    }

    /// The height of the best block.
    pub fn tip(&self) -> u32 {
        self.chain.lock().expect("lock").tip
    }
}
