"""Drives `agent-vault ui` for tests/e2e/ui.rs.

  ui_driver.py attacks LOGIN_URL          plain HTTP checks (urllib): no cookie,
                                          wrong CSRF, foreign Host, login reuse;
                                          prints one JSON object of findings
  ui_driver.py approve LOGIN_URL ID OUT   headless Chromium (Selenium): log in,
                                          open proposal ID from the list, type
                                          each value of $UI_VALUES (JSON list, in
                                          field order), approve; page sources
                                          saved in OUT/*.html
  ui_driver.py deny LOGIN_URL ID REASON OUT
  ui_driver.py page LOGIN_URL ID OUT      saves the proposal's page source
  ui_driver.py connect LOGIN_URL PATH PROVIDER_BASE OUT
                                          headless Chromium: log in, fill the
                                          OAuth connect form (client secret from
                                          $UI_CLIENT_SECRET), follow the provider
                                          and back; prints the final URL, title
                                          and text
  ui_driver.py webhook PORTFILE LOG       a receiver on 127.0.0.1 port 0 that
                                          appends each POST body (one line) to
                                          LOG; its port written to PORTFILE
"""

import http.client
import http.server
import json
import os
import re
import sys
import urllib.parse


def split(login_url):
    u = urllib.parse.urlsplit(login_url)
    return u.hostname, u.port, u.path + "?" + u.query


def request(port, method, path, host=None, cookie=None, body=None, origin=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Host": host or f"127.0.0.1:{port}"}
    if cookie:
        headers["Cookie"] = cookie
    if origin:
        headers["Origin"] = origin
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    out = (r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read().decode("utf-8", "replace"))
    c.close()
    return out


def attacks(login_url):
    _, port, login_path = split(login_url)
    found = {}
    # Before logging in: nothing but the login notice.
    found["no_cookie_get"] = request(port, "GET", "/")[0]
    # A foreign Host (DNS rebinding), even with the right token.
    found["foreign_host_login"] = request(port, "GET", login_path, host=f"evil.example:{port}")[0]
    found["wrong_token"] = request(port, "GET", "/login?t=" + "A" * 43)[0]
    status, headers, _ = request(port, "GET", login_path)
    found["login"] = status
    found["set_cookie"] = headers.get("set-cookie", "")
    found["location"] = headers.get("location", "")
    cookie = found["set_cookie"].split(";")[0]
    found["reuse"] = request(port, "GET", login_path)[0]
    status, headers, page = request(port, "GET", "/", cookie=cookie)
    found["list"] = status
    found["headers"] = {k: headers.get(k, "") for k in (
        "content-security-policy", "x-content-type-options", "referrer-policy", "cache-control")}
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    csrf = m.group(1) if m else ""
    found["csrf_len"] = len(csrf)
    found["foreign_host_session"] = request(port, "GET", "/", host=f"evil.example:{port}", cookie=cookie)[0]
    found["localhost_host"] = request(port, "GET", "/", host=f"localhost:{port}", cookie=cookie)[0]
    # POSTs: the log-out form is the simplest one.
    body = "csrf=" + urllib.parse.quote(csrf)
    found["post_no_cookie"] = request(port, "POST", "/logout", body=body)[0]
    found["post_no_csrf"] = request(port, "POST", "/logout", cookie=cookie, body="x=1")[0]
    found["post_wrong_csrf"] = request(port, "POST", "/logout", cookie=cookie, body="csrf=" + "B" * 43)[0]
    found["post_foreign_origin"] = request(
        port, "POST", "/logout", cookie=cookie, body=body, origin="http://evil.example")[0]
    found["post_foreign_host"] = request(
        port, "POST", "/logout", cookie=cookie, body=body, host=f"evil.example:{port}")[0]
    found["still_in"] = request(port, "GET", "/", cookie=cookie)[0]
    found["logout"] = request(port, "POST", "/logout", cookie=cookie, body=body)[0]
    found["after_logout"] = request(port, "GET", "/", cookie=cookie)[0]
    found["css"] = request(port, "GET", "/static/style.css")[0]
    print(json.dumps(found))


def browser(insecure=False):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    if insecure:
        # The test provider's certificate is from a CA of the test's own.
        opts.set_capability("acceptInsecureCerts", True)
    opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=390,844", "--no-proxy-server"):
        opts.add_argument(a)
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    d = webdriver.Chrome(options=opts, service=service)
    d.set_page_load_timeout(30)
    return d


def navigate(d, act):
    """Does `act` (a click or key that submits or follows a link) and waits
    until the next page has loaded: a click returns as soon as it is sent, and
    reading the URL or the page before the old one is gone races it. The old
    page is marked with a script variable, which the new page does not have
    (chromedriver reports an element of the old page in several ways, not
    only as stale)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    d.execute_script("window.__agentVaultOldPage = true")
    act()

    def loaded(d):
        try:
            return d.execute_script(
                "return window.__agentVaultOldPage === undefined && document.readyState === 'complete'")
        except WebDriverException:
            return False  # between two pages

    WebDriverWait(d, 30).until(loaded)


def save(d, out, name):
    with open(os.path.join(out, name + ".html"), "w") as f:
        f.write(d.page_source)


def open_proposal(d, login_url, pid, out):
    from selenium.webdriver.common.by import By

    d.get(login_url)
    save(d, out, "list")
    # Open the proposal from the list, as a person would.
    navigate(d, d.find_element(By.LINK_TEXT, pid).click)
    save(d, out, "proposal")


def approve(login_url, pid, out):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    values = json.loads(os.environ.get("UI_VALUES", "[]"))
    d = browser()
    try:
        open_proposal(d, login_url, pid, out)
        # At phone width (the window is 390 px wide) nothing runs off the side.
        fits = d.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth")
        fields = d.find_elements(By.CSS_SELECTOR, "input[type=password]")
        assert len(fields) == len(values), f"{len(fields)} fields for {len(values)} values"
        # Keyboard only: focus the first field, type, Tab on.
        fields[0].click() if fields else None
        for f, v in zip(fields, values):
            f.send_keys(v)
        approve_button = d.find_element(By.ID, "approve")
        navigate(d, lambda: approve_button.send_keys(Keys.ENTER))
        save(d, out, "after")
        print(json.dumps({"url": d.current_url, "title": d.title, "fits_phone_width": fits}))
    finally:
        d.quit()


def deny(login_url, pid, reason, out):
    from selenium.webdriver.common.by import By

    d = browser()
    try:
        open_proposal(d, login_url, pid, out)
        d.find_element(By.ID, "reason").send_keys(reason)
        navigate(d, d.find_element(By.ID, "deny").click)
        save(d, out, "after")
        print(json.dumps({"url": d.current_url, "title": d.title}))
    finally:
        d.quit()


def page(login_url, pid, out):
    d = browser()
    try:
        d.get(login_url)
        base = login_url.split("/login")[0]
        d.get(f"{base}/p/{pid}")
        save(d, out, "proposal")
        # What a person sees: the text, not markup run as a script.
        print(json.dumps({"text": d.find_element("tag name", "body").text}))
    finally:
        d.quit()


def connect(login_url, path, provider, out):
    d = browser(insecure=True)
    try:
        d.get(login_url)
        base = login_url.split("/login")[0]
        d.get(f"{base}/oauth?path={path}")
        fill_connect(d, provider, out)
    finally:
        d.quit()


def approve_connect(login_url, pid, provider, out):
    """Approves proposal PID (no values to type: its slot is OAuth), which
    leads to the connect form for the slot; connects there."""
    from selenium.webdriver.common.by import By

    d = browser(insecure=True)
    try:
        open_proposal(d, login_url, pid, out)
        navigate(d, d.find_element(By.ID, "approve").click)
        fill_connect(d, provider, out)
    finally:
        d.quit()


def fill_connect(d, provider, out):
    from selenium.webdriver.common.by import By

    save(d, out, "connect")
    form_url = d.current_url
    fields = d.find_elements(By.NAME, "path")
    if not fields:
        raise SystemExit("no connect form at %s: %s" % (form_url, d.find_element("tag name", "body").text))
    path = fields[0].get_attribute("value")
    d.find_element(By.NAME, "client_id").send_keys("agent-vault-test")
    d.find_element(By.NAME, "client_secret").send_keys(os.environ["UI_CLIENT_SECRET"])
    d.find_element(By.NAME, "authorization_url").send_keys(provider + "/authorize")
    d.find_element(By.NAME, "token_url").send_keys(provider + "/token")
    d.find_element(By.NAME, "scopes").send_keys("repo read:user")
    navigate(d, d.find_element(By.CSS_SELECTOR, "form[action='/oauth/start'] button").click)
    save(d, out, "continue")
    navigate(d, d.find_element(By.ID, "continue").click)
    save(d, out, "connected")
    print(json.dumps({"url": d.current_url, "title": d.title, "form_url": form_url,
                      "path": path, "text": d.find_element("tag name", "body").text}))


def webhook(portfile, log):
    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            n = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(n)
            with open(log, "ab") as f:
                f.write(body.replace(b"\n", b"\\n") + b"\n")
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *a):
            pass

    s = http.server.HTTPServer(("127.0.0.1", 0), H)
    with open(portfile + ".tmp", "w") as f:
        f.write(str(s.server_address[1]))
    os.rename(portfile + ".tmp", portfile)
    s.serve_forever()


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"attacks": attacks, "approve": approve, "deny": deny, "page": page, "connect": connect,
     "approve-connect": approve_connect,
     "webhook": webhook}[cmd](*args)
