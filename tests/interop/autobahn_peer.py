"""A WAMP peer written with autobahn (an implementation babble-net did not
write), run by tests/wamp_interop.rs against the babble-signal router.

It registers "py.peer" (answering offers like a babble node would), calls the
Rust peer "rust.peer", calls an unknown procedure, then waits for a line on
standard input before leaving. Progress goes to standard output, one line
per step, for the Rust test to check.
"""
import asyncio
import json
import sys

from autobahn.asyncio.wamp import ApplicationRunner, ApplicationSession
from autobahn.wamp.exception import ApplicationError


class Peer(ApplicationSession):
    async def onJoin(self, details):
        def offer(from_id, sdp):
            if sdp == "":
                raise ApplicationError("io.babble.processing_offer", "empty offer from " + from_id)
            return json.dumps({"type": "answer", "sdp": "py answer to " + from_id})

        await self.register(offer, "py.peer")
        print("READY", flush=True)
        answer = await self.call(
            "rust.peer", "py.peer", json.dumps({"type": "offer", "sdp": "py offer"})
        )
        print("ANSWER " + answer, flush=True)
        try:
            await self.call("nobody", "py.peer", "{}")
            print("ERROR none", flush=True)
        except ApplicationError as error:
            print("ERROR " + error.error, flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.readline)
        self.leave()

    def onDisconnect(self):
        print("BYE", flush=True)
        asyncio.get_event_loop().stop()


if __name__ == "__main__":
    url, realm = sys.argv[1], sys.argv[2]
    ApplicationRunner(url, realm).run(Peer)
